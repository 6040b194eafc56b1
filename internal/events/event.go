// Package events is latch's event stream: one documented schema, latch.event/1
// (docs/events.md, docs/latch.event.schema.json), written to any combination of sinks —
// a JSON-lines file with size-based rotation, a syslog collector (RFC 5424 over TCP,
// UDP, TLS or a unix socket) and API subscribers (`latch events --follow`).
//
// A sink never delays a verdict. Emitting is a non-blocking send of a small value to a
// bounded queue; one goroutine builds and encodes each event once and hands the line to
// each sink's own bounded queue; each sink writes from its own goroutine. A full queue
// drops the event and counts it (Stats, metrics latch_events_dropped_total, `latch
// status`); a failed collector is reconnected with exponential backoff.
package events

import (
	"net/netip"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// Schema is the value of every event's "schema" field.
const Schema = "latch.event/1"

// Event types (the "event" field).
const (
	ConnectionDecided = "connection.decided"
	QuestionOpened    = "question.opened"
	QuestionAnswered  = "question.answered"
	RuleAdded         = "rule.added"
	RuleRemoved       = "rule.removed"
	RuleChanged       = "rule.changed"
	RuleExpired       = "rule.expired"
	DaemonStarted     = "daemon.started"
	DaemonStopped     = "daemon.stopped"
	BackendDegraded   = "backend.degraded"
)

// Event is one latch.event/1 document. Which of the optional objects are present
// depends on Event (see docs/events.md).
type Event struct {
	Schema     string      `json:"schema"`
	Event      string      `json:"event"`
	Time       time.Time   `json:"time"`
	HostID     string      `json:"host_id"`
	HostName   string      `json:"host_name"`
	Seq        uint64      `json:"seq"`
	Connection *Connection `json:"connection,omitempty"`
	Process    *Process    `json:"process,omitempty"`
	Decision   *Decision   `json:"decision,omitempty"`
	Question   *Question   `json:"question,omitempty"`
	Rule       *RuleInfo   `json:"rule,omitempty"`
	Daemon     *Daemon     `json:"daemon,omitempty"`
	Backend    *Backend    `json:"backend,omitempty"`
}

// Connection describes a held connection.
type Connection struct {
	ID         uint64 `json:"id"` // the backend's request id, unique within one daemon run
	Direction  string `json:"direction"`
	Protocol   string `json:"protocol"`
	LocalIP    string `json:"local_ip"`
	LocalPort  uint16 `json:"local_port"`
	RemoteIP   string `json:"remote_ip"`
	RemotePort uint16 `json:"remote_port"`
	RemoteHost string `json:"remote_host,omitempty"`
}

// Process is the program that made a connection.
type Process struct {
	PID         int32  `json:"pid"` // 0: unknown
	Executable  string `json:"executable"`
	UID         int32  `json:"uid"` // -1: unknown
	User        string `json:"user"`
	CommandLine string `json:"command_line,omitempty"`
}

// Decision is a verdict.
type Decision struct {
	Action         string  `json:"action"`
	Reason         string  `json:"reason"`
	RuleID         uint64  `json:"rule_id"` // 0: none
	LatencySeconds float64 `json:"latency_seconds"`
}

// Question is an open or closed question.
type Question struct {
	ID      uint64    `json:"id"`
	Held    int       `json:"held"`
	Opened  time.Time `json:"opened"`
	Expires time.Time `json:"expires"`
}

// RuleInfo is a rule as the rules file writes it.
type RuleInfo = engine.Rule

// Daemon describes the daemon in daemon.started and daemon.stopped.
type Daemon struct {
	Version string `json:"version"`
	PID     int    `json:"pid"`
	Backend string `json:"backend"`
	Mode    string `json:"mode"`
	Default string `json:"default"`
	Error   string `json:"error,omitempty"` // daemon.stopped: why, if it failed
}

// Backend describes a degradation in backend.degraded.
type Backend struct {
	Name      string `json:"name"`
	Condition string `json:"condition"` // queue_overflow, queue_drop, hold_timeout, attribution_unavailable, history_drop, events_drop
	Count     uint64 `json:"count"`     // occurrences since the previous report
	Message   string `json:"message"`
}

func addr(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.Unmap().String()
}

func connectionOf(r *engine.Request) *Connection {
	return &Connection{
		ID: uint64(r.ID), Direction: r.Direction.String(), Protocol: r.Protocol.String(),
		LocalIP: addr(r.Local.Addr()), LocalPort: r.Local.Port(),
		RemoteIP: addr(r.Remote.Addr()), RemotePort: r.Remote.Port(), RemoteHost: r.Host,
	}
}

func processOf(r *engine.Request) *Process {
	return &Process{PID: r.PID, Executable: r.Exe, UID: r.UID, User: r.User, CommandLine: r.Cmdline}
}

func decisionOf(v engine.Verdict, held time.Duration) *Decision {
	return &Decision{Action: v.Action.String(), Reason: string(v.Reason), RuleID: uint64(v.RuleID), LatencySeconds: held.Seconds()}
}

func questionOf(p *engine.Prompt) *Question {
	return &Question{ID: uint64(p.ID), Held: p.Held, Opened: p.Opened.UTC(), Expires: p.Expires.UTC()}
}
