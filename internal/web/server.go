// Package web is latch's web UI server: it serves the embedded assets of web/, a
// login by one-time token, and the local API's own handlers (internal/api) under /api/,
// so the browser sees the same JSON, the same validation and the same error texts as
// the command line. Live updates come as server-sent events.
//
// Security: every request must name the listen address in its Host header (DNS
// rebinding gets 403); a request whose Origin is not this server's gets 403; all but
// /login need the session cookie (HttpOnly, SameSite=Strict) or get 401; every /api/
// request, reading ones and the event stream too, must carry the session's key in the
// X-Latch-Key header (the event stream, which EventSource opens without headers, in
// its key parameter), and every request that changes something an Origin header, or
// gets 403. The cookie alone is worth nothing: cookies are not isolated by port
// (RFC 6265 §8.5), so whoever serves on another port of this host may be sent it. The
// key is handed out once, in the page /login answers (which the page keeps in its
// sessionStorage, isolated by origin), and never again. The session is created by
// GET /login?token=T or POST /login (form field token) with a one-time token the
// daemon hands to root over the API socket (`latch web url`, `latch web open`).
package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/localhttp"
	"github.com/latchfw/latch/internal/store"
)

// Header and cookie names.
const (
	// KeyHeader carries the session's key on every /api/ request.
	KeyHeader = "X-Latch-Key"
	// KeyParam carries it in the URL of GET /api/events, which EventSource opens.
	KeyParam      = "key"
	SessionCookie = "latch_session"
)

// Lifetimes of login tokens and sessions.
const (
	TokenLifetime   = 5 * time.Minute
	SessionLifetime = 24 * time.Hour
	maxSessions     = 64
	maxTokens       = 64
)

// Config says what a Server serves.
type Config struct {
	// Addr is the listen address, host:port; requests must name it in Host.
	Addr string
	// TLS says the server is reached over https (cookies get Secure).
	TLS bool
	// API is the local API's handler (api.Server.Handler), served under /api/.
	API http.Handler
	// Engine feeds the event stream (questions, answers, rule changes).
	Engine *engine.Engine
	// History feeds the live connections of the event stream; nil: none.
	History *store.History
	// Assets are the UI's files (web.Assets), index.html at the root.
	Assets fs.FS
	// Logf logs errors; nil: log.Printf.
	Logf func(format string, args ...any)
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time
}

type session struct {
	key     string
	expires time.Time
}

// Server is the web UI's HTTP server.
type Server struct {
	cfg     Config
	origin  string
	mux     *http.ServeMux
	csp     string
	ctx     context.Context
	cancel  context.CancelFunc
	feed    *connFeed
	mu      sync.Mutex
	tokens  map[[32]byte]time.Time // sha256 of a login token -> expiry
	session map[[32]byte]session   // sha256 of a session cookie -> session
}

// CheckAddr checks a --web listen address: host:port with an IP address (not
// 0.0.0.0 or ::, since requests must name the address in Host), loopback unless remote
// is allowed.
func CheckAddr(addr string, allowRemote bool) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("web address %q: want IP:PORT, e.g. 127.0.0.1:7654", addr)
	}
	if ap.Port() == 0 {
		return fmt.Errorf("web address %q: want a port other than 0", addr)
	}
	if ap.Addr().IsUnspecified() {
		return fmt.Errorf("web address %q: want the address browsers will use, not %s", addr, ap.Addr())
	}
	if !ap.Addr().IsLoopback() && !allowRemote {
		return fmt.Errorf("web address %q: not a loopback address; other machines could reach it (allow that with --web-allow-remote and TLS)", addr)
	}
	return nil
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.API == nil || cfg.Engine == nil || cfg.Assets == nil {
		return nil, errors.New("web: API, Engine and Assets are required")
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	scheme := "http"
	if cfg.TLS {
		scheme = "https"
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg: cfg, origin: scheme + "://" + cfg.Addr, mux: http.NewServeMux(),
		ctx: ctx, cancel: cancel,
		tokens: map[[32]byte]time.Time{}, session: map[[32]byte]session{},
	}
	csp, err := contentSecurityPolicy(cfg.Assets)
	if err != nil {
		cancel()
		return nil, err
	}
	s.csp = csp
	s.feed = newConnFeed(ctx, cfg.History, cfg.Logf)
	s.mux.HandleFunc("GET /login", s.login)
	s.mux.HandleFunc("POST /login", s.login)
	s.mux.HandleFunc("GET /api/session", s.sessionInfo)
	s.mux.HandleFunc("POST /api/logout", s.logout)
	s.mux.HandleFunc("GET /api/events", s.events)
	s.mux.HandleFunc("POST /api/rules/form", s.ruleForm)
	s.mux.Handle("/api/v1/", http.StripPrefix("/api", s.apiFilter(cfg.API)))
	s.mux.Handle("/api/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
	}))
	files := http.FileServerFS(cfg.Assets)
	s.mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	}))
	return s, nil
}

// Close ends the event streams.
func (s *Server) Close() { s.cancel() }

// Origin is the server's origin, e.g. http://127.0.0.1:7654.
func (s *Server) Origin() string { return s.origin }

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashToken(t string) [32]byte { return sha256.Sum256([]byte(t)) }

// LoginURL makes a one-time login token (valid TokenLifetime) and returns the URL that
// opens a session with it.
func (s *Server) LoginURL() string {
	t := randomToken()
	now := s.cfg.Now()
	s.mu.Lock()
	for k, exp := range s.tokens {
		if !now.Before(exp) {
			delete(s.tokens, k)
		}
	}
	if len(s.tokens) >= maxTokens { // a flood of `latch web url` keeps the newest
		for k := range s.tokens {
			delete(s.tokens, k)
			break
		}
	}
	s.tokens[hashToken(t)] = now.Add(TokenLifetime)
	s.mu.Unlock()
	return s.origin + "/login?token=" + t
}

// LoginHandler serves POST /v1/web/login on the API socket: {"url": LoginURL()}.
func (s *Server) LoginHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"url": s.LoginURL()})
	})
}

// ServeHTTP checks Host, Origin, session and CSRF token, then serves r.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", s.csp)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if !strings.EqualFold(r.Host, s.cfg.Addr) {
		writeError(w, http.StatusForbidden, fmt.Sprintf("host %q: this server answers to %s only", r.Host, s.cfg.Addr))
		return
	}
	origin := r.Header.Get("Origin")
	// The login page `latch web open` writes posts from a file:// page, whose origin
	// is "null"; a login needs a one-time token only root is given.
	fileLogin := r.URL.Path == "/login" && r.Method == http.MethodPost && origin == "null"
	if origin != "" && origin != s.origin && !fileLogin {
		writeError(w, http.StatusForbidden, fmt.Sprintf("origin %q: cross-origin requests are refused", origin))
		return
	}
	changes := r.Method != http.MethodGet && r.Method != http.MethodHead
	if changes && origin == "" {
		writeError(w, http.StatusForbidden, "a request that changes something must carry an Origin header")
		return
	}
	if r.URL.Path == "/login" {
		s.mux.ServeHTTP(w, r)
		return
	}
	sess, ok := s.currentSession(r)
	if !ok {
		if !strings.HasPrefix(r.URL.Path, "/api/") && !changes {
			h.Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintln(w, "latch: not logged in. Run `sudo latch web url` (or `latch web open`) and open the URL it prints.")
			return
		}
		writeError(w, http.StatusUnauthorized, "not logged in: open the URL `latch web url` prints")
		return
	}
	if strings.HasPrefix(r.URL.Path, "/api/") || changes {
		key := r.Header.Get(KeyHeader)
		if key == "" && r.URL.Path == "/api/events" && r.Method == http.MethodGet {
			key = r.URL.Query().Get(KeyParam)
		}
		if subtle.ConstantTimeCompare([]byte(key), []byte(sess.key)) != 1 {
			writeError(w, http.StatusForbidden, "missing or wrong session key ("+KeyHeader+" header): log in again in this tab (`latch web open`)")
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) currentSession(r *http.Request) (session, bool) {
	c, err := r.Cookie(SessionCookie)
	if err != nil || c.Value == "" {
		return session{}, false
	}
	k := hashToken(c.Value)
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.session[k]
	if !ok {
		return session{}, false
	}
	if !s.cfg.Now().Before(sess.expires) {
		delete(s.session, k)
		return session{}, false
	}
	return sess, true
}

// login exchanges a one-time token (GET ?token=, or POST form field token) for a
// session: the cookie, and the key in a page that keeps it in the tab's
// sessionStorage and goes on to /.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	t := r.URL.Query().Get("token")
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, 4096)
		if err := r.ParseForm(); err != nil {
			writeError(w, http.StatusBadRequest, "login form: "+err.Error())
			return
		}
		t = r.PostForm.Get("token")
	}
	k := hashToken(t)
	now := s.cfg.Now()
	s.mu.Lock()
	exp, ok := s.tokens[k]
	delete(s.tokens, k) // one use, even a late one
	if ok && now.Before(exp) && t != "" {
		if len(s.session) >= maxSessions {
			var oldest [32]byte
			first := true
			for k, v := range s.session {
				if first || v.expires.Before(s.session[oldest].expires) {
					oldest, first = k, false
				}
			}
			delete(s.session, oldest)
		}
	} else {
		ok = false
	}
	var cookie, key string
	if ok {
		cookie, key = randomToken(), randomToken()
		s.session[hashToken(cookie)] = session{key: key, expires: now.Add(SessionLifetime)}
	}
	s.mu.Unlock()
	if !ok {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprintln(w, "latch: this login link is wrong, used or expired. Run `sudo latch web url` for a new one.")
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: cookie, Path: "/", HttpOnly: true, Secure: s.cfg.TLS,
		SameSite: http.SameSiteStrictMode, MaxAge: int(SessionLifetime / time.Second),
	})
	// The key goes to this page only: /login.js keeps it in the tab's sessionStorage
	// and moves on to / (a same-origin navigation, which sends the SameSite cookie).
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>latch</title>
<meta name="latch-key" content="%s">
<script src="/login.js"></script>
</head><body><p>Logging in to latch…</p></body></html>
`, key) // base64url: nothing to escape
}

// sessionInfo says until when the session holds (it never repeats the key).
func (s *Server) sessionInfo(w http.ResponseWriter, r *http.Request) {
	sess, _ := s.currentSession(r)
	writeJSON(w, http.StatusOK, map[string]time.Time{"expires": sess.expires})
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(SessionCookie); err == nil {
		s.mu.Lock()
		delete(s.session, hashToken(c.Value))
		s.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: s.cfg.TLS, SameSite: http.SameSiteStrictMode})
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// apiFilter keeps what the API socket serves only to root away from the browser: the
// login-URL endpoint (a session must not mint sessions) and the raw event stream (the
// UI has its own, /api/events).
func (s *Server) apiFilter(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/web/") || r.URL.Path == "/v1/events" {
			writeError(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s /api%s", r.Method, r.URL.Path))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// RuleFormRequest is the body of POST /api/rules/form: a rule as typed into the form
// (the flags of `latch rules add`), and optionally the id of a rule it replaces (edit).
type RuleFormRequest struct {
	api.RuleForm
	Replace engine.RuleID `json:"replace,omitempty"`
}

// ruleForm adds the rule a form describes, with the command line's parsing and error
// text, through the API handler; with replace, it then removes the old rule.
func (s *Server) ruleForm(w http.ResponseWriter, r *http.Request) {
	data, ok := readBody(w, r, 1<<20)
	if !ok {
		return
	}
	var req RuleFormRequest
	if err := decodeStrict(data, &req); err != nil {
		writeError(w, http.StatusBadRequest, "rule: "+err.Error())
		return
	}
	rule, err := req.RuleForm.Rule(s.cfg.Now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Replace != 0 && !s.ruleExists(req.Replace) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("rule %d: no such rule", req.Replace))
		return
	}
	body, _ := json.Marshal(rule)
	rec := s.callAPI(r.Context(), "POST", "/v1/rules", body)
	if rec.code != http.StatusOK || req.Replace == 0 {
		rec.copyTo(w)
		return
	}
	del := s.callAPI(r.Context(), "DELETE", fmt.Sprintf("/v1/rules/%d", req.Replace), nil)
	if del.code != http.StatusOK {
		// The old rule stays; take the new one back so that nothing changed.
		var added engine.Rule
		if json.Unmarshal(rec.body.Bytes(), &added) == nil && added.ID != 0 {
			s.callAPI(r.Context(), "DELETE", fmt.Sprintf("/v1/rules/%d", added.ID), nil)
		}
		del.copyTo(w)
		return
	}
	rec.copyTo(w)
}

func (s *Server) ruleExists(id engine.RuleID) bool {
	for _, r := range s.cfg.Engine.Rules() {
		if r.ID == id {
			return true
		}
	}
	return false
}

type recorded struct {
	code   int
	header http.Header
	body   bytes.Buffer
}

func (rec *recorded) Header() http.Header         { return rec.header }
func (rec *recorded) Write(b []byte) (int, error) { return rec.body.Write(b) }
func (rec *recorded) WriteHeader(code int)        { rec.code = code }

func (rec *recorded) copyTo(w http.ResponseWriter) {
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.code)
	w.Write(rec.body.Bytes())
}

// callAPI runs one request through the API handler in-process.
func (s *Server) callAPI(ctx context.Context, method, path string, body []byte) *recorded {
	req, _ := http.NewRequestWithContext(ctx, method, path, bytes.NewReader(body))
	rec := &recorded{code: http.StatusOK, header: http.Header{}}
	s.cfg.API.ServeHTTP(rec, req)
	return rec
}

// ConnLimit bounds the web UI listener's connections (see Listen). Anyone on this
// host may connect before logging in; a browser uses 6 at most per server.
var ConnLimit = localhttp.Limit{Total: 64, PerPeer: 16}

// Listen opens the web UI's TCP listener on addr, with ConnLimit; logf logs refused
// connections (nil: not logged).
func Listen(addr string, logf func(string, ...any)) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("web UI %s: %w", addr, err)
	}
	return localhttp.LimitListener(l, "web UI "+addr, ConnLimit, logf), nil
}

// EndSessions ends every session and forgets every login token: the daemon calls it
// when its listener is gone, since whoever binds the address next is sent the
// sessions' cookies and keys by the browsers that had the UI open.
func (s *Server) EndSessions() {
	s.mu.Lock()
	clear(s.session)
	clear(s.tokens)
	s.mu.Unlock()
}
