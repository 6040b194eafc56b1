// Package notify shows latch's open questions as desktop notifications
// (freedesktop.org org.freedesktop.Notifications over the D-Bus session bus) with
// Allow, Deny and Open actions, for `latch notify` in a user's desktop session. It
// follows the daemon's event stream; when the daemon stops it closes its
// notifications and waits for the daemon to come back.
//
// ActionInvoked and NotificationClosed are broadcast signals that any client of the
// session bus may emit; notify acts only on those sent by the current owner of
// org.freedesktop.Notifications (its unique name, followed through NameOwnerChanged),
// and forgets the notifications of an owner that went away (showing the open
// questions again with the new one).
package notify

import (
	"context"
	"fmt"
	"html"
	"path"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/textesc"
)

// D-Bus names of the notification service.
const (
	Service   = "org.freedesktop.Notifications"
	Path      = dbus.ObjectPath("/org/freedesktop/Notifications")
	Interface = "org.freedesktop.Notifications"
)

// Action keys of a question's notification.
const (
	ActionAllow = "allow"
	ActionDeny  = "deny"
	ActionOpen  = "open"
)

// Config says how to notify.
type Config struct {
	API *api.Client // the daemon's API
	Bus *dbus.Conn  // the session bus
	// For and Scope are how Allow and Deny answer (AnswerRequest.For and .Scope):
	// "" is once, and app+host+port.
	For, Scope string
	// Open opens a URL (the web UI's login URL, which holds a one-time token) in the
	// user's browser without putting it on a command line (weblaunch.Open); nil: Open
	// is not offered.
	Open func(url string) error
	// Retry is how long to wait before trying the daemon again (default 1s).
	Retry time.Duration
	// Logf reports what happens (the daemon went away, an answer failed).
	Logf func(format string, args ...any)
}

type notifier struct {
	cfg     Config
	obj     dbus.BusObject
	markup  bool
	actions bool
	byID    map[uint32]engine.PromptID // notification -> question
	shown   map[engine.PromptID]uint32 // question -> notification
	// once are the questions about programs whose identity is not verified: an
	// answer to them is for that question only (no rule can name such a program).
	once map[engine.PromptID]bool
	// owner is the unique bus name that owns Service now ("" if none): only its
	// signals are about the notifications in byID.
	owner string
}

// Names of the bus itself, the sender of NameOwnerChanged.
const (
	busName      = "org.freedesktop.DBus"
	busInterface = "org.freedesktop.DBus"
)

// Run shows notifications until ctx is done. It returns an error only if the
// notification service cannot be used at all.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Retry <= 0 {
		cfg.Retry = time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	n := &notifier{cfg: cfg, obj: cfg.Bus.Object(Service, Path),
		byID: map[uint32]engine.PromptID{}, shown: map[engine.PromptID]uint32{}, once: map[engine.PromptID]bool{}}
	// Signals are received from before the owner is asked for, so that no change
	// of owner is missed.
	signals := make(chan *dbus.Signal, 64)
	cfg.Bus.Signal(signals)
	defer cfg.Bus.RemoveSignal(signals)
	if err := cfg.Bus.AddMatchSignalContext(ctx, dbus.WithMatchSender(busName), dbus.WithMatchInterface(busInterface),
		dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, Service)); err != nil {
		return fmt.Errorf("desktop notifications: subscribing to NameOwnerChanged of %s: %w", Service, err)
	}
	for _, member := range []string{"ActionInvoked", "NotificationClosed"} {
		// The bus delivers only the owner's signals; notify checks again (signals
		// matched for other subscriptions of this connection come here too).
		if err := cfg.Bus.AddMatchSignalContext(ctx, dbus.WithMatchSender(Service), dbus.WithMatchInterface(Interface),
			dbus.WithMatchMember(member), dbus.WithMatchObjectPath(Path)); err != nil {
			return fmt.Errorf("desktop notifications: subscribing to %s: %w", member, err)
		}
	}
	var caps []string
	if err := n.obj.CallWithContext(ctx, Interface+".GetCapabilities", 0).Store(&caps); err != nil {
		return fmt.Errorf("desktop notifications (%s on the session bus): %w", Service, err)
	}
	for _, c := range caps {
		n.markup = n.markup || c == "body-markup"
		n.actions = n.actions || c == "actions"
	}
	// GetCapabilities started the service if the bus activates it; who owns it now.
	if err := cfg.Bus.BusObject().CallWithContext(ctx, busInterface+".GetNameOwner", 0, Service).Store(&n.owner); err != nil {
		cfg.Logf("desktop notifications: who owns %s: %v; waiting for an owner", Service, err)
		n.owner = ""
	}
	defer n.closeAll()

	away := false
	for ctx.Err() == nil {
		stream, err := cfg.API.Events(ctx)
		if err != nil {
			if !away {
				cfg.Logf("latch daemon not reachable (%v); waiting for it", err)
				away = true
			}
			if !sleep(ctx, cfg.Retry, signals, n) {
				return nil
			}
			continue
		}
		if away {
			cfg.Logf("latch daemon is back")
			away = false
		}
		n.follow(ctx, stream, signals)
		stream.Close()
		n.closeAll()
		if ctx.Err() == nil {
			cfg.Logf("latch daemon stopped; waiting for it")
			away = true
		}
	}
	return nil
}

// sleep waits d, handling signals meanwhile; false if ctx ended.
func sleep(ctx context.Context, d time.Duration, signals chan *dbus.Signal, n *notifier) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case s := <-signals:
			n.signal(ctx, s) // nothing is shown while the daemon is away
		}
	}
}

// follow shows the daemon's questions until its event stream ends.
func (n *notifier) follow(ctx context.Context, stream *api.EventStream, signals chan *dbus.Signal) {
	events := make(chan api.Event)
	done := make(chan struct{})
	defer close(done)
	go func() {
		defer close(events)
		for {
			ev, err := stream.Next()
			if err != nil {
				return
			}
			select {
			case events <- ev:
			case <-done:
				return
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-signals:
			if n.signal(ctx, s) && n.owner != "" {
				// A new notification service: it shows the open questions.
				n.sync(ctx)
			}
		case ev, ok := <-events:
			if !ok {
				return
			}
			switch ev.Kind {
			case api.EventHello, api.EventGap:
				// Questions opened before this stream started, or events the
				// daemon could not send (this client was too slow).
				n.sync(ctx)
			case api.EventPrompt:
				if ev.Prompt != nil {
					n.show(ctx, ev.Prompt)
				}
			case api.EventAnswered:
				if ev.Prompt != nil {
					n.close(ev.Prompt.ID)
				}
			}
		}
	}
}

// sync lists the open questions: it shows those not shown and closes the
// notifications of those no longer open.
func (n *notifier) sync(ctx context.Context) {
	ps, err := n.cfg.API.Prompts(ctx)
	if err != nil {
		n.cfg.Logf("listing questions: %v", err)
		return
	}
	open := make(map[engine.PromptID]bool, len(ps))
	for i := range ps {
		open[ps[i].ID] = true
	}
	for pid := range n.shown {
		if !open[pid] {
			n.close(pid)
		}
	}
	for i := range ps {
		n.show(ctx, &ps[i])
	}
}

// Text shows what a question's notification says: a summary and a body (plain text,
// escaped like every latch output).
func Text(p *api.Prompt) (summary, body string) {
	name := textesc.String(path.Base(p.Exe))
	if p.Exe == "" {
		name = "unknown program"
	}
	dest := textesc.String(p.RemoteIP)
	if strings.Contains(dest, ":") {
		dest = "[" + dest + "]"
	}
	if p.Host != "" {
		dest = textesc.String(p.Host) + " (" + dest + ")"
	}
	if p.RemotePort != 0 {
		dest += fmt.Sprintf(":%d", p.RemotePort)
	}
	dest += "/" + p.Proto.String()
	verb := "wants to connect to"
	if p.Direction == engine.Inbound {
		verb = "is being reached from"
	}
	summary = fmt.Sprintf("latch: %s %s %s", name, verb, dest)
	body = fmt.Sprintf("%s\npid %d, user %s", textesc.String(p.Exe), p.PID, textesc.String(p.User))
	if onceOnly(p) {
		body += "\nNOT VERIFIED: this program may not be the one its path names; Allow and Deny answer this connection only"
	}
	return summary, body
}

func (n *notifier) show(ctx context.Context, p *api.Prompt) {
	if _, ok := n.shown[p.ID]; ok {
		return
	}
	summary, body := Text(p)
	if n.markup {
		body = html.EscapeString(body)
	}
	var actions []string
	if n.actions {
		actions = []string{"default", "Open latch", ActionAllow, "Allow", ActionDeny, "Deny"}
		if n.cfg.Open != nil {
			actions = append(actions, ActionOpen, "Open")
		}
	}
	timeout := int32(-1)
	if left := time.Until(p.Expires); left > 0 {
		timeout = int32(min(left, time.Hour) / time.Millisecond)
	}
	hints := map[string]dbus.Variant{
		"urgency":  dbus.MakeVariant(byte(2)), // critical: a connection is held
		"category": dbus.MakeVariant("network"),
	}
	var id uint32
	err := n.obj.CallWithContext(ctx, Interface+".Notify", 0, "latch", uint32(0), "network-wireless",
		summary, body, actions, hints, timeout).Store(&id)
	if err != nil {
		n.cfg.Logf("showing question %d: %v", p.ID, err)
		return
	}
	n.byID[id] = p.ID
	n.shown[p.ID] = id
	if onceOnly(p) {
		n.once[p.ID] = true
	}
}

// onceOnly says whether an answer about p can only be for that question: its program
// is not verified to be the host's file at its path (see engine.Identity).
func onceOnly(p *api.Prompt) bool {
	return p.Exe != "" && p.Identity != engine.IdentityVerified
}

func (n *notifier) close(pid engine.PromptID) {
	id, ok := n.shown[pid]
	if !ok {
		return
	}
	delete(n.shown, pid)
	delete(n.byID, id)
	delete(n.once, pid)
	n.obj.Call(Interface+".CloseNotification", 0, id)
}

// forget drops every notification shown by old, the previous owner of Service; if it
// is still on the bus, it is asked to close them (without waiting for it).
func (n *notifier) forget(old string) {
	if old != "" {
		obj := n.cfg.Bus.Object(old, Path)
		for id := range n.byID {
			obj.Go(Interface+".CloseNotification", dbus.FlagNoReplyExpected, nil, id)
		}
	}
	clear(n.byID)
	clear(n.shown)
	clear(n.once)
}

func (n *notifier) closeAll() {
	for pid := range n.shown {
		n.close(pid)
	}
}

// signal handles the bus's NameOwnerChanged for Service, and the notification
// service's ActionInvoked and NotificationClosed if its current owner sent them. It
// reports whether the owner changed (the notifications shown are forgotten then).
func (n *notifier) signal(ctx context.Context, s *dbus.Signal) (ownerChanged bool) {
	if s == nil {
		return false
	}
	if s.Name == busInterface+".NameOwnerChanged" {
		if s.Sender != busName || len(s.Body) < 3 {
			return false
		}
		name, ok1 := s.Body[0].(string)
		owner, ok2 := s.Body[2].(string)
		if !ok1 || !ok2 || name != Service || owner == n.owner {
			return false
		}
		if n.owner != "" || owner != "" {
			n.cfg.Logf("desktop notifications: %s is now owned by %q (was %q)", Service, owner, n.owner)
		}
		old := n.owner
		n.owner = owner
		// The old owner's notifications: ids of another service, its signals
		// no longer taken.
		n.forget(old)
		return true
	}
	if s.Path != Path || n.owner == "" || s.Sender != n.owner {
		return false
	}
	switch s.Name {
	case Interface + ".NotificationClosed":
		if len(s.Body) >= 1 {
			if id, ok := s.Body[0].(uint32); ok {
				if pid, ok := n.byID[id]; ok {
					delete(n.byID, id)
					delete(n.shown, pid)
					delete(n.once, pid)
				}
			}
		}
	case Interface + ".ActionInvoked":
		if len(s.Body) < 2 {
			return false
		}
		id, ok1 := s.Body[0].(uint32)
		key, ok2 := s.Body[1].(string)
		pid, ok3 := n.byID[id]
		if !ok1 || !ok2 || !ok3 {
			return false
		}
		switch key {
		case ActionAllow, ActionDeny:
			req := api.AnswerRequest{Action: key, For: n.cfg.For, Scope: n.cfg.Scope}
			if n.once[pid] {
				req.For, req.Scope = "once", ""
			}
			_, err := n.cfg.API.Answer(ctx, pid, req)
			if err != nil {
				n.cfg.Logf("answering question %d %s: %v", pid, key, err)
			}
		case ActionOpen, "default":
			if n.cfg.Open == nil {
				return false
			}
			u, err := n.cfg.API.WebLoginURL(ctx)
			if err == nil {
				err = n.cfg.Open(u)
			}
			if err != nil {
				n.cfg.Logf("opening the web UI: %v", err)
			}
		}
	}
	return false
}
