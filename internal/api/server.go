package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/latchfw/latch/internal/blocklist"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
	"github.com/latchfw/latch/internal/strictjson"
)

// Body size limits: a rule is small, a rules file may hold 100,000 rules.
const (
	maxBody   = 1 << 20
	maxImport = 64 << 20
)

// Config says what a Server serves.
type Config struct {
	Engine *engine.Engine // required
	// History answers /v1/conns; nil turns that endpoint into a 503.
	History *store.History
	// Status returns the daemon's part of /v1/status; the server fills in the engine's
	// and the history's counters. nil: those counters only.
	Status func() Status
	// SaveRules persists the engine's current rules. It is called after every change
	// made through the API before the reply; if it fails, the change is undone (an
	// answer's verdict cannot be, and the reply says so). nil: rules are not saved.
	SaveRules func() error
	// Reload reads the managed rule files again (`latch reload`); it returns what it
	// did, or why it kept the rules in force. nil: /v1/reload answers 501.
	Reload func() (string, error)
	// Group, if not nil, is a group whose members may use the API besides root
	// (`latch daemon --api-group`; Linux).
	Group *Group
	// Routes are further endpoints (pattern as for http.ServeMux, e.g.
	// "POST /v1/web/login"), served behind the same peer-credential check.
	Routes map[string]http.Handler
	// Logf logs server errors; nil: log.Printf.
	Logf func(format string, args ...any)
	// EventLog subscribes to the latch.event/1 stream (GET /v1/events/stream): a
	// channel of JSON documents and a func that ends the subscription. nil: a 503.
	EventLog func() (<-chan []byte, func())
	// CheckUser says whether a rule's user name (not a numeric uid) names an account
	// on this system, for rules added or imported through the API (rules already in
	// the rules file at start-up are not checked: an account removed later must not
	// keep the daemon from starting). nil: SystemUser.
	CheckUser func(name string) error
	// RateWindow is the span /v1/top measures current rates over; 0: 20 s. Set it
	// to at least twice the interval of traffic reports.
	RateWindow time.Duration
	// Lists manages the blocklists (/v1/lists); nil: a 503.
	Lists *blocklist.Manager
}

// Server serves the local API.
type Server struct {
	cfg    Config
	mux    *http.ServeMux
	http   *http.Server
	ctx    context.Context
	cancel context.CancelFunc

	// ruleMu serializes rule changes through the API so that an undo after a failed
	// save restores exactly the set before the change.
	ruleMu sync.Mutex
}

// NewServer returns a Server for cfg.
func NewServer(cfg Config) *Server {
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	if cfg.CheckUser == nil {
		cfg.CheckUser = SystemUser
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, mux: http.NewServeMux(), ctx: ctx, cancel: cancel}
	s.mux.HandleFunc("GET /v1/status", s.status)
	s.mux.HandleFunc("GET /v1/rules", s.listRules)
	s.mux.HandleFunc("POST /v1/rules", s.addRule)
	s.mux.HandleFunc("DELETE /v1/rules/{id}", s.removeRule)
	s.mux.HandleFunc("GET /v1/rules/export", s.exportRules)
	s.mux.HandleFunc("POST /v1/rules/import", s.importRules)
	s.mux.HandleFunc("GET /v1/prompts", s.listPrompts)
	s.mux.HandleFunc("POST /v1/prompts/{id}/answer", s.answer)
	s.mux.HandleFunc("GET /v1/conns", s.conns)
	s.mux.HandleFunc("GET /v1/top", s.top)
	s.mux.HandleFunc("GET /v1/events", s.events)
	s.mux.HandleFunc("POST /v1/explain", s.explain)
	s.mux.HandleFunc("GET /v1/events/stream", s.eventLog)
	s.mux.HandleFunc("GET /v1/rules/hits", s.ruleHits)
	s.mux.HandleFunc("POST /v1/reload", s.reload)
	s.mux.HandleFunc("GET /v1/rules/precedence", s.rulePrecedence)
	s.mux.HandleFunc("GET /v1/history", s.history)
	s.mux.HandleFunc("GET /v1/programs", s.programs)
	s.mux.HandleFunc("GET /v1/programs/conns", s.programConns)
	for pattern, h := range cfg.Routes {
		s.mux.Handle(pattern, h)
	}
	s.mux.HandleFunc("GET /v1/mode", s.getMode)
	s.mux.HandleFunc("POST /v1/mode", s.setMode)
	s.mux.HandleFunc("GET /v1/suggestions", s.listSuggestions)
	s.mux.HandleFunc("POST /v1/suggestions/accept", s.acceptSuggestions)
	s.mux.HandleFunc("GET /v1/lists", s.getLists)
	s.mux.HandleFunc("POST /v1/lists", s.addList)
	s.mux.HandleFunc("DELETE /v1/lists/{name}", s.removeList)
	s.mux.HandleFunc("POST /v1/lists/update", s.updateLists)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
	})
	s.http = &http.Server{
		Handler:           s.authorize(s.mux),
		ConnContext:       connContext,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(logWriter{cfg.Logf}, "", 0),
	}
	return s
}

type logWriter struct{ logf func(string, ...any) }

func (l logWriter) Write(p []byte) (int, error) { l.logf("api: %s", p); return len(p), nil }

// Handler returns the API's HTTP handler, without the peer-credential check (for
// embedding behind another listener that checks its peers itself).
func (s *Server) Handler() http.Handler { return s.mux }

// Serve serves the API on l until Close. It returns http.ErrServerClosed after Close.
func (s *Server) Serve(l net.Listener) error { return s.http.Serve(l) }

// Close stops the server: event streams end, connections close, and Serve returns.
func (s *Server) Close() error {
	s.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.http.Shutdown(ctx); err != nil {
		return s.http.Close()
	}
	return nil
}

func (s *Server) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := peerAllowed(r.Context(), s.cfg.Group); err != nil {
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

// readBody reads a request body of at most limit bytes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", limit))
		} else {
			writeError(w, http.StatusBadRequest, "reading request body: "+err.Error())
		}
		return nil, false
	}
	return data, true
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	var st Status
	if s.cfg.Status != nil {
		st = s.cfg.Status()
	}
	es := s.cfg.Engine.Stats()
	st.Decisions = make(map[string]uint64, len(es.Decisions))
	for reason, n := range es.Decisions {
		st.Decisions[string(reason)] = n
	}
	st.PendingPrompts = es.Open
	st.HeldConnections = es.Held
	st.QuestionCaps = es.QuestionCaps
	st.Rules = es.Rules
	ms := s.cfg.Engine.ModeState()
	st.DecisionMode = &ms
	if s.cfg.History != nil {
		st.History = s.cfg.History.Stats()
	}
	if st.Attribution == nil {
		st.Attribution = []string{}
	}
	writeJSON(w, http.StatusOK, st)
}

type rulesBody struct {
	Rules []engine.Rule `json:"rules"`
}

func (s *Server) listRules(w http.ResponseWriter, r *http.Request) {
	writeRules(w, s.cfg.Engine.Rules())
}

// writeRules writes {"rules": [...]} one rule at a time, so that a reply with 100,000
// rules needs no buffer the size of the whole reply.
func writeRules(w http.ResponseWriter, rules []engine.Rule) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.WriteString(`{"rules":[`)
	for i := range rules {
		if i > 0 {
			bw.WriteByte(',')
		}
		b, err := rules[i].MarshalJSON()
		if err != nil {
			// Rule.MarshalJSON only marshals strings and numbers; it cannot fail.
			panic(fmt.Sprintf("api: marshalling rule %d: %v", rules[i].ID, err))
		}
		bw.Write(b)
	}
	bw.WriteString("]}\n")
	bw.Flush()
}

// changeRules applies change and saves the result, undoing the change if the save
// fails. It reports the error to w and returns false on failure.
func (s *Server) changeRules(w http.ResponseWriter, change func() (int, error)) bool {
	s.ruleMu.Lock()
	defer s.ruleMu.Unlock()
	before := s.cfg.Engine.Rules()
	if code, err := change(); err != nil {
		writeError(w, code, err.Error())
		return false
	}
	if s.cfg.SaveRules != nil {
		if err := s.cfg.SaveRules(); err != nil {
			s.cfg.Logf("api: saving rules failed, undoing the change: %v", err)
			if uerr := s.cfg.Engine.ReplaceRules(before); uerr != nil {
				s.cfg.Logf("api: undoing the change failed: %v", uerr)
			}
			writeError(w, http.StatusInternalServerError, fmt.Sprintf("saving rules failed, nothing changed: %v", err))
			return false
		}
	}
	// The change is in force for new connections already (the engine decides by
	// it, the kernel's fast path dropped what it had cached); its hooks mark the
	// flows it affects to be decided again. Answered once they did, so that after
	// the call not even a datagram on a flow allowed before passes by the old
	// rules. Bounded: a hook that hangs must not hang the API.
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	if err := s.cfg.Engine.SettleHooks(ctx); err != nil {
		s.cfg.Logf("api: %v", err)
	}
	return true
}

// settleTimeout bounds how long a rule change's API call waits for the change's
// hooks (engine.SettleHooks).
const settleTimeout = 10 * time.Second

func (s *Server) addRule(w http.ResponseWriter, r *http.Request) {
	data, ok := readBody(w, r, maxBody)
	if !ok {
		return
	}
	var rule engine.Rule
	if err := rule.UnmarshalJSON(data); err != nil {
		writeError(w, http.StatusBadRequest, "rule: "+err.Error())
		return
	}
	if rule.ID != 0 {
		writeError(w, http.StatusBadRequest, `rule: field "id": assigned by the daemon, leave it out`)
		return
	}
	if err := s.checkUser(&rule); err != nil {
		writeError(w, http.StatusBadRequest, "rule: "+err.Error())
		return
	}
	var added engine.Rule
	if !s.changeRules(w, func() (int, error) {
		var err error
		added, err = s.cfg.Engine.AddRule(rule)
		if err != nil {
			return http.StatusBadRequest, fmt.Errorf("rule: %w", err)
		}
		return 0, nil
	}) {
		return
	}
	writeJSON(w, http.StatusOK, added)
}

func (s *Server) removeRule(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("rule id %q: want a positive number", r.PathValue("id")))
		return
	}
	var removed engine.Rule
	if !s.changeRules(w, func() (int, error) {
		if !slices.ContainsFunc(s.cfg.Engine.Rules(), func(x engine.Rule) bool { return x.ID == engine.RuleID(id) }) {
			return http.StatusNotFound, fmt.Errorf("rule %d: no such rule", id)
		}
		var err error
		removed, err = s.cfg.Engine.RemoveRule(engine.RuleID(id))
		if errors.Is(err, engine.ErrManaged) {
			return http.StatusForbidden, err
		}
		if err != nil {
			return http.StatusNotFound, err
		}
		return 0, nil
	}) {
		return
	}
	writeJSON(w, http.StatusOK, removed)
}

func (s *Server) exportRules(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(engine.MarshalRules(s.cfg.Engine.Rules()))
}

func (s *Server) importRules(w http.ResponseWriter, r *http.Request) {
	data, ok := readBody(w, r, maxImport)
	if !ok {
		return
	}
	rules, err := engine.ParseRules(data)
	if err != nil {
		writeError(w, http.StatusBadRequest, "import: "+err.Error())
		return
	}
	now := time.Now()
	for i := range rules {
		r := &rules[i]
		err := s.checkUser(r)
		if err == nil && r.Expired(now) {
			err = &engine.FieldError{Field: "expires", Value: r.Expires.Format(time.RFC3339), Err: errors.New("already passed")}
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, "import: "+(&engine.RuleError{Index: i, ID: r.ID, Err: err}).Error())
			return
		}
	}
	if !s.changeRules(w, func() (int, error) {
		if err := s.cfg.Engine.ReplaceRules(rules); err != nil {
			return http.StatusBadRequest, fmt.Errorf("import: %w", err)
		}
		return 0, nil
	}) {
		return
	}
	s.listRules(w, r)
}

type promptsBody struct {
	Prompts []Prompt `json:"prompts"`
}

func (s *Server) listPrompts(w http.ResponseWriter, r *http.Request) {
	ps := s.cfg.Engine.Prompts()
	out := make([]Prompt, len(ps))
	for i := range ps {
		out[i] = PromptView(&ps[i])
	}
	writeJSON(w, http.StatusOK, promptsBody{out})
}

// ParseAnswer turns an AnswerRequest into an engine.Answer; errors name the field.
// An empty (left out) For is "once", an empty Scope "app+host+port".
func ParseAnswer(req AnswerRequest) (engine.Answer, error) {
	var a engine.Answer
	var err error
	if req.Action == "" {
		return a, errors.New(`field "action": required: allow, deny, reject or drop`)
	}
	if a.Action, err = engine.ParseAction(req.Action); err != nil {
		return a, fmt.Errorf(`field "action": %w`, err)
	}
	if req.For != "" {
		if a.For, err = engine.ParseFor(req.For); err != nil {
			return a, fmt.Errorf(`field "for": %w`, err)
		}
	}
	a.Scope = engine.ScopeAppHostPort
	if req.Scope != "" {
		if a.Scope, err = engine.ParseScope(req.Scope); err != nil {
			return a, fmt.Errorf(`field "scope": %w`, err)
		}
	}
	return a, nil
}

// decodeAnswer reads an AnswerRequest strictly: one object, fields spelt exactly and
// given once, each a string; a field given must not be empty or null (leave it out
// for its default).
func decodeAnswer(data []byte) (AnswerRequest, error) {
	var req AnswerRequest
	members, err := strictjson.Object(data, "action", "for", "scope")
	if err != nil {
		return req, err
	}
	for _, f := range []struct {
		name, def string
		dst       *string
	}{{"action", "", &req.Action}, {"for", "once", &req.For}, {"scope", "app+host+port", &req.Scope}} {
		raw, ok := members[f.name]
		if !ok {
			continue
		}
		if strictjson.IsNull(raw) {
			return req, fmt.Errorf("field %q: null is not a value", f.name)
		}
		v, err := strictjson.String(raw)
		if err != nil {
			return req, fmt.Errorf("field %q: %v", f.name, err)
		}
		if v == "" && f.def != "" {
			return req, fmt.Errorf("field %q: empty (leave it out for %s)", f.name, f.def)
		}
		*f.dst = v
	}
	return req, nil
}

// checkUser refuses a rule whose user name names no account here.
func (s *Server) checkUser(r *engine.Rule) error {
	if r.User == "" || engine.IsUID(r.User) {
		return nil
	}
	if err := s.cfg.CheckUser(r.User); err != nil {
		return &engine.FieldError{Field: "user", Value: strconv.Quote(r.User), Err: err}
	}
	return nil
}

type answerBody struct {
	Rule *engine.Rule `json:"rule"`
}

func (s *Server) answer(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("prompt id %q: want a positive number", r.PathValue("id")))
		return
	}
	data, ok := readBody(w, r, maxBody)
	if !ok {
		return
	}
	req, err := decodeAnswer(data)
	if err != nil {
		writeError(w, http.StatusBadRequest, "answer: "+err.Error())
		return
	}
	a, err := ParseAnswer(req)
	if err != nil {
		writeError(w, http.StatusBadRequest, "answer: "+err.Error())
		return
	}
	pid := engine.PromptID(id)
	if !slices.ContainsFunc(s.cfg.Engine.Prompts(), func(p engine.Prompt) bool { return p.ID == pid }) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("prompt %d: not open (already answered, timed out, or never asked)", id))
		return
	}
	s.ruleMu.Lock()
	defer s.ruleMu.Unlock()
	rule, err := s.cfg.Engine.Answer(pid, a)
	if err != nil {
		writeError(w, http.StatusConflict, err.Error())
		return
	}
	if rule != nil && s.cfg.SaveRules != nil {
		if err := s.cfg.SaveRules(); err != nil {
			s.cfg.Logf("api: saving rules after answering prompt %d failed: %v", id, err)
			writeError(w, http.StatusInternalServerError, fmt.Sprintf(
				"prompt %d answered %s, but saving its rule %d failed (it holds until the daemon stops): %v",
				id, a.Action, rule.ID, err))
			return
		}
	}
	writeJSON(w, http.StatusOK, answerBody{rule})
}

type connsBody struct {
	Conns []Conn `json:"conns"`
}

func (s *Server) conns(w http.ResponseWriter, r *http.Request) {
	if s.cfg.History == nil {
		writeError(w, http.StatusServiceUnavailable, "connection history is off")
		return
	}
	q := r.URL.Query()
	for k := range q {
		if k != "after" && k != "n" {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown parameter %q: want after and n", k))
			return
		}
	}
	n, after := 50, int64(0)
	if v := q.Get("n"); v != "" {
		x, err := strconv.Atoi(v)
		if err != nil || x <= 0 || x > 100_000 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("parameter \"n\" %q: want a number from 1 to 100000", v))
			return
		}
		n = x
	}
	if v := q.Get("after"); v != "" {
		x, err := strconv.ParseInt(v, 10, 64)
		if err != nil || x < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("parameter \"after\" %q: want a connection id", v))
			return
		}
		after = x
	}
	// Connections decided before this request are shown, not left in the write buffer.
	s.cfg.History.Flush()
	cs, err := s.cfg.History.Recent(n, after)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := make([]Conn, len(cs))
	for i := range cs {
		out[i] = ConnView(&cs[i])
	}
	writeJSON(w, http.StatusOK, connsBody{out})
}

// EventView converts an engine event to the API's form.
func EventView(ev engine.Event) Event {
	out := Event{Kind: EventKind(ev.Kind), Verdict: ev.Verdict, Rules: ev.Rules}
	if ev.Prompt != nil {
		p := PromptView(ev.Prompt)
		out.Prompt = &p
	}
	if out.Kind == EventRules && out.Rules == nil {
		out.Rules = []engine.Rule{}
	}
	return out
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	events, cancel := s.cfg.Engine.Subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	if enc.Encode(Event{Kind: EventHello}) != nil {
		return
	}
	flusher.Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			if enc.Encode(EventView(ev)) != nil {
				return
			}
			flusher.Flush()
		}
	}
}

// reloadBody is the reply of /v1/reload.
type reloadBody struct {
	Message string `json:"message"`
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Reload == nil {
		writeError(w, http.StatusNotImplemented, "this daemon has nothing to reload")
		return
	}
	s.ruleMu.Lock()
	msg, err := s.cfg.Reload()
	s.ruleMu.Unlock()
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, reloadBody{Message: msg})
}
