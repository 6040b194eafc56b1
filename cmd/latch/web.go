package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/localhttp"
	"github.com/latchfw/latch/internal/store"
	iweb "github.com/latchfw/latch/internal/web"
	"github.com/latchfw/latch/internal/weblaunch"
	assets "github.com/latchfw/latch/web"
)

const webHelp = `Usage:
  latch web url     print a one-time login URL of the web UI (valid 5 minutes, one use)
  latch web open    log your browser in (xdg-open on a private page that holds the
                    token: the token is never on a command line)

The daemon serves the web UI when started with --web, e.g.
  sudo latch daemon --web 127.0.0.1:7654
The URL comes from the daemon over the API socket, so only those who may use the
API (root, or members of --api-group) can log in. After login the browser keeps a
session cookie for 24 hours, and the tab keeps the session's key (another tab logs in
anew). 'latch web open' never puts the token on a command line (every local user can
read those): the browser gets a page only you can read, which posts it, removed after
30 seconds. Paste the URL of 'latch web url' into the browser, not into a command.
`

func runWeb(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("want a subcommand: url or open")
	}
	switch args[0] {
	case "url", "open":
	case "-h", "-help", "--help", "help":
		return errHelp
	default:
		return usagef("unknown subcommand %q: want url or open", args[0])
	}
	fs := newFlags("web " + args[0])
	if err := parseFlagsOnly(fs, args[1:]); err != nil {
		return err
	}
	u, err := client().WebLoginURL(ctx)
	if err != nil {
		return err
	}
	if args[0] == "url" {
		fmt.Println(u)
		return nil
	}
	// The token stays off every command line (xdg-open's, the browser's): they are
	// readable by every local user. The browser gets a private page that posts it.
	if err := weblaunch.Open(u); err != nil {
		return fmt.Errorf("opening the web UI: %w (run `latch web url` and open the URL it prints yourself)", err)
	}
	fmt.Println("opening the web UI in your browser")
	return nil
}

// checkWebFlags validates the --web flags.
func checkWebFlags(o *daemonOptions) error {
	if o.Web == "" {
		if o.WebAllowRemote || o.WebCert != "" || o.WebKey != "" {
			return usagef("--web-allow-remote, --web-cert and --web-key need --web IP:PORT")
		}
		return nil
	}
	if err := iweb.CheckAddr(o.Web, o.WebAllowRemote); err != nil {
		return usagef("--web: %v", err)
	}
	if (o.WebCert == "") != (o.WebKey == "") {
		return usagef("--web-cert and --web-key go together")
	}
	if o.WebAllowRemote && o.WebCert == "" {
		return usagef("--web-allow-remote needs TLS: --web-cert FILE --web-key FILE")
	}
	return nil
}

// webUI is the daemon's web UI, if --web started one.
type webUI struct {
	srv atomic.Pointer[iweb.Server]
	svc atomic.Pointer[localhttp.Service]
}

// loginHandler serves POST /v1/web/login on the API socket. While the listener is
// not bound (another program holds the address), it hands out no login URL: the
// program that answers there is not latch's.
func (w *webUI) loginHandler() http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		s := w.srv.Load()
		if s == nil {
			rw.Header().Set("Content-Type", "application/json")
			rw.WriteHeader(http.StatusConflict)
			fmt.Fprintln(rw, `{"error":"the web UI is off: start the daemon with --web 127.0.0.1:7654"}`)
			return
		}
		if st := w.status(); st != nil && !st.Up {
			rw.Header().Set("Content-Type", "application/json")
			rw.WriteHeader(http.StatusServiceUnavailable)
			json.NewEncoder(rw).Encode(map[string]string{"error": fmt.Sprintf(
				"the web UI is down: %s; the daemon retries binding %s (see 'latch status'); no login URL while another program may answer there",
				st.Error, st.Addr)})
			return
		}
		s.LoginHandler().ServeHTTP(rw, r)
	})
}

// status is the web UI listener's state; nil without --web.
func (w *webUI) status() *localhttp.Status {
	svc := w.svc.Load()
	if svc == nil {
		return nil
	}
	st := svc.Status()
	return &st
}

// start serves the web UI on o.Web; the returned function stops it. An address
// another program holds does not stop the daemon: the UI is down, and the bind is
// retried in the background (see localhttp.Service).
func (w *webUI) start(o *daemonOptions, srv *api.Server, eng *engine.Engine, hist *store.History, logf func(string, ...any)) (func(), error) {
	ws, err := iweb.New(iweb.Config{Addr: o.Web, TLS: o.WebCert != "", API: srv.Handler(), Engine: eng,
		History: hist, Assets: assets.Assets(), Logf: logf})
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: ws}
	localhttp.Timeouts(hs)
	if o.WebCert != "" {
		cert, err := tls.LoadX509KeyPair(o.WebCert, o.WebKey)
		if err != nil {
			ws.Close()
			return nil, fmt.Errorf("--web-cert %s, --web-key %s: %w", o.WebCert, o.WebKey, err)
		}
		hs.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	serve := func(l net.Listener) error {
		if o.WebCert != "" {
			return hs.ServeTLS(l, "", "")
		}
		return hs.Serve(l)
	}
	up := func(up bool) {
		if up {
			logf("web UI at %s (log in with 'latch web open' or 'latch web url')", ws.Origin())
		} else {
			// Whoever binds the address next is sent the open tabs' cookies and keys.
			ws.EndSessions()
		}
	}
	svc := localhttp.NewService("web UI", o.Web, func() (net.Listener, error) { return iweb.Listen(o.Web, logf) },
		serve, up, logf)
	w.srv.Store(ws)
	w.svc.Store(svc)
	svc.Start()
	return func() {
		w.srv.Store(nil)
		ws.Close()
		svc.Stop(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if hs.Shutdown(ctx) != nil {
				hs.Close()
			}
		})
		w.svc.Store(nil)
	}, nil
}
