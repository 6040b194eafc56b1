package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os/user"
	"strconv"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

// ExplainRequest is the body of POST /v1/explain: either a past connection from the
// history (Conn), or a connection described by its fields (Remote required; Port
// required for tcp and udp).
type ExplainRequest struct {
	Conn      int64  `json:"conn,omitempty"`       // history id of a past connection
	App       string `json:"app,omitempty"`        // executable path; "" unknown
	Remote    string `json:"remote,omitempty"`     // remote IP address
	Port      uint16 `json:"port,omitempty"`       // remote port
	Proto     string `json:"proto,omitempty"`      // tcp (default), udp, icmp, icmpv6 or a number
	User      string `json:"user,omitempty"`       // account name or uid
	Host      string `json:"host,omitempty"`       // hostname the program resolved
	Dir       string `json:"dir,omitempty"`        // out (default) or in
	LocalPort uint16 `json:"local_port,omitempty"` // local port
}

// Explanation is what POST /v1/explain returns: the engine's explanation under the
// rules in force now, the id of the deciding rule (0: none, a question), and the
// connection explained (for a past connection, with the verdict it got then).
type Explanation struct {
	engine.Explanation
	RuleID  engine.RuleID `json:"rule_id"`
	Request ExplainedConn `json:"request"`        // the connection explained
	Conn    *Conn         `json:"conn,omitempty"` // for a past connection: the history entry, with its verdict then
}

// ExplainedConn is the connection an explanation is about, as the engine saw it.
type ExplainedConn struct {
	Direction  engine.Direction `json:"direction"`
	Proto      engine.Protocol  `json:"proto"`
	RemoteIP   string           `json:"remote_ip"`
	RemotePort uint16           `json:"remote_port"`
	LocalPort  uint16           `json:"local_port"`
	Exe        string           `json:"exe"`
	UID        int32            `json:"uid"` // -1: unknown
	User       string           `json:"user"`
	Host       string           `json:"host,omitempty"`
	// Container and ContainerName: the container, as in Conn (a past connection's).
	Container     string `json:"container,omitempty"`
	ContainerName string `json:"container_name,omitempty"`
}

func explainedConn(r *engine.Request) ExplainedConn {
	return ExplainedConn{
		Direction: r.Direction, Proto: r.Protocol, RemoteIP: addrString(r.Remote.Addr()), RemotePort: r.Remote.Port(),
		LocalPort: r.Local.Port(), Exe: r.Exe, UID: r.UID, User: r.User, Host: r.Host,
		Container: r.Container, ContainerName: r.ContainerName,
	}
}

// requestOf builds the engine request an ExplainRequest describes; errors name the field.
func requestOf(er ExplainRequest) (engine.Request, error) {
	req := engine.Request{Exe: er.App, UID: -1, Host: er.Host}
	if er.App != "" {
		// The question is about the program that really is the host's file at that
		// path: a verified identity (a forged one matches no app rule).
		req.Identity = engine.IdentityVerified
	}
	var err error
	if er.Remote == "" {
		return req, errors.New(`field "remote": required: the remote IP address (or give "conn")`)
	}
	addr, err := netip.ParseAddr(er.Remote)
	if err != nil || addr.Zone() != "" {
		return req, fmt.Errorf(`field "remote" %q: want an IP address`, er.Remote)
	}
	if er.Proto == "" {
		req.Protocol = engine.TCP
	} else if req.Protocol, err = engine.ParseProtocol(er.Proto); err != nil {
		return req, fmt.Errorf(`field "proto": %w`, err)
	} else if req.Protocol == engine.AnyProtocol {
		return req, fmt.Errorf(`field "proto" %q: a connection has one protocol`, er.Proto)
	}
	if (req.Protocol == engine.TCP || req.Protocol == engine.UDP) && er.Port == 0 {
		return req, fmt.Errorf(`field "port": required for %s: 1 to 65535`, req.Protocol)
	}
	if er.Dir == "" {
		req.Direction = engine.Outbound
	} else if req.Direction, err = engine.ParseDirection(er.Dir); err != nil {
		return req, fmt.Errorf(`field "dir": %w`, err)
	} else if req.Direction == engine.AnyDirection {
		return req, fmt.Errorf(`field "dir" %q: a connection goes in or out`, er.Dir)
	}
	if er.Host != "" {
		if _, err := engine.ParseHost(er.Host); err != nil || er.Host[0] == '*' {
			return req, fmt.Errorf(`field "host" %q: want a hostname`, er.Host)
		}
	}
	req.Remote = netip.AddrPortFrom(addr, er.Port)
	req.Local = netip.AddrPortFrom(netip.Addr{}, er.LocalPort)
	if er.User != "" {
		// Rules name accounts by name or uid: the request carries both when known.
		if uid, err := strconv.ParseUint(er.User, 10, 31); err == nil {
			req.UID = int32(uid)
			if u, err := user.LookupId(er.User); err == nil {
				req.User = u.Username
			}
		} else {
			req.User = er.User
			if u, err := user.Lookup(er.User); err == nil {
				if uid, err := strconv.ParseUint(u.Uid, 10, 31); err == nil {
					req.UID = int32(uid)
				}
			}
		}
	}
	return req, nil
}

func (s *Server) explain(w http.ResponseWriter, r *http.Request) {
	data, ok := readBody(w, r, maxBody)
	if !ok {
		return
	}
	var er ExplainRequest
	if err := decodeStrict(data, &er); err != nil {
		writeError(w, http.StatusBadRequest, "explain: "+err.Error())
		return
	}
	var out Explanation
	var req engine.Request
	if er.Conn != 0 {
		if er != (ExplainRequest{Conn: er.Conn}) {
			writeError(w, http.StatusBadRequest, `explain: field "conn": give a connection id or its fields, not both`)
			return
		}
		if s.cfg.History == nil {
			writeError(w, http.StatusServiceUnavailable, "connection history is off")
			return
		}
		c, err := s.cfg.History.Get(er.Conn)
		if errors.Is(err, store.ErrNoConn) {
			writeError(w, http.StatusNotFound, "explain: "+err.Error())
			return
		} else if err != nil {
			writeError(w, http.StatusInternalServerError, "explain: "+err.Error())
			return
		}
		req = c.Request
		cv := ConnView(&c)
		out.Conn = &cv
	} else {
		var err error
		if req, err = requestOf(er); err != nil {
			writeError(w, http.StatusBadRequest, "explain: "+err.Error())
			return
		}
	}
	out.Explanation = s.cfg.Engine.Explain(&req)
	out.Request = explainedConn(&req)
	if out.Rule != nil {
		out.RuleID = out.Rule.ID
	}
	writeJSON(w, http.StatusOK, out)
}

// Explain asks how the daemon would decide a connection (see ExplainRequest).
func (c *Client) Explain(ctx context.Context, er ExplainRequest) (*Explanation, error) {
	body, err := json.Marshal(er)
	if err != nil {
		return nil, err
	}
	var out Explanation
	if err := c.do(ctx, "POST", "/v1/explain", body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

type ruleHitsBody struct {
	Hits []engine.RuleHits `json:"hits"`
}

func (s *Server) ruleHits(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, ruleHitsBody{s.cfg.Engine.RuleHits()})
}

// RuleHits returns each rule's hit counter: connections decided and when last.
func (c *Client) RuleHits(ctx context.Context) ([]engine.RuleHits, error) {
	var b ruleHitsBody
	if err := c.do(ctx, "GET", "/v1/rules/hits", nil, &b); err != nil {
		return nil, err
	}
	return b.Hits, nil
}
