// Package browser starts a real headless Chromium (Debian's chromium package) for the
// web UI's tests, driven with chromedp, and saves screenshots as test artefacts.
package browser

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// EnvArtifacts names the directory screenshots go to; unset: a temporary directory
// that is kept (its path is logged).
const EnvArtifacts = "LATCH_ARTIFACTS"

// Find returns the path of the Chromium binary, or "" when none is installed.
func Find() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless_shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// New starts a headless Chromium with a new, empty profile and returns a chromedp
// context for one tab; it skips the test (saying why) when no Chromium is installed.
// The browser stops when the test ends.
func New(t testing.TB) context.Context {
	t.Helper()
	return NewIn(t, "")
}

// NewIn is New with the browser running in network namespace ns ("" for this one),
// where it reaches what listens on that namespace's loopback.
func NewIn(t testing.TB, ns string) context.Context {
	t.Helper()
	bin := Find()
	if bin == "" {
		t.Skip("chromium not installed (apt-get install chromium): the browser tests need it")
	}
	profile := t.TempDir()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // root in a test namespace
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("disable-features", "Translate,OptimizationHints,MediaRouter"),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 900),
	}
	if ns != "" {
		ip, err := exec.LookPath("ip")
		if err != nil {
			t.Fatalf("ip (iproute2) not found: %v", err)
		}
		opts = append(opts, chromedp.ModifyCmdFunc(func(cmd *exec.Cmd) {
			cmd.Args = append([]string{"ip", "netns", "exec", ns, cmd.Path}, cmd.Args[1:]...)
			cmd.Path = ip
		}))
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithErrorf(func(f string, a ...any) {
		// cdproto lags Chromium: unknown events are reported, not fatal.
		if !strings.Contains(fmt.Sprintf(f, a...), "unknown") {
			t.Logf("chromedp: "+f, a...)
		}
	}))
	if err := chromedp.Do(ctx); err != nil {
		cancelCtx()
		cancelAlloc()
		t.Fatalf("starting %s: %v", bin, err)
	}
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	return ctx
}

// Artifacts returns the directory for this test's screenshots.
func Artifacts(t testing.TB) string {
	t.Helper()
	dir := os.Getenv(EnvArtifacts)
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "latch-artifacts")
	}
	dir = filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Screenshot saves a full-page PNG of the tab as NAME.png in the test's artefacts.
func Screenshot(t testing.TB, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(Artifacts(t), name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	t.Logf("screenshot: %s", p)
}

// Eval evaluates the JavaScript expression expr (awaiting a promise) and returns its
// value.
func Eval[T any](ctx context.Context, expr string) (T, error) {
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}

// WaitJS polls the JavaScript expression expr until it is true or timeout passes.
func WaitJS(ctx context.Context, expr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("waiting for %s: %w", expr, err)
			}
			return fmt.Errorf("waiting for %s: not true after %v", expr, timeout)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
