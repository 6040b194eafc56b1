package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/textesc"
)

const watchHelp = `Usage: latch watch

Shows each question as it arrives, oldest first, and takes the answer:

  a allow   d deny   r reject   s skip (leave it to the timeout or another UI)   q quit
  then how long: o once (Enter)   h an hour   d a day   f forever
  then, unless once, what the rule covers:
       1 app   2 app+host   3 app+port   4 app+host+port (Enter)
  Esc goes back a step.

Paths, user and host names are shown with control and invisible characters escaped
(\x1b, \u{202E}: see "Text output" in the README). On a terminal, a path or host
name too long for the screen is cut in the middle, where … stands, so that the
question's number, the program's own name, the user, the destination and the keys
stay in view; 'latch prompts --json' has it whole.

When standard input is not a terminal, watch reads one answer per line for the
question shown last:  ACTION [FOR] [SCOPE]  or  ID ACTION [FOR] [SCOPE]
(for example "allow forever app+host", "3 deny once", "skip"). At the end of the
input it goes on showing questions until interrupted.
`

// watchRefresh is how often watch re-reads the open questions, besides when the event
// stream says it lost some (a slow reader loses events rather than slow the daemon).
const watchRefresh = 2 * time.Second

type watchStage int

const (
	stageAction watchStage = iota
	stageFor
	stageScope
)

type watcher struct {
	c           *api.Client
	out         io.Writer
	interactive bool
	def         string // the daemon's default verdict, for the display

	// width is the terminal's width in cells, to keep a question's key parts on
	// screen; 0: standard output is not a terminal, nothing is shortened.
	width func() int

	open    map[engine.PromptID]api.Prompt
	skipped map[engine.PromptID]bool
	cur     *api.Prompt
	stage   watchStage
	action  string
	forStr  string
}

// crlf turns "\n" into "\r\n" for a terminal in raw mode.
type crlf struct{ w io.Writer }

func (c crlf) Write(p []byte) (int, error) {
	_, err := c.w.Write([]byte(strings.ReplaceAll(string(p), "\n", "\r\n")))
	return len(p), err
}

func runWatch(ctx context.Context, args []string) error {
	fs := newFlags("watch")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	c := client()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Events(ctx)
	if err != nil {
		return err
	}
	defer stream.Close()
	if ev, err := stream.Next(); err != nil || ev.Kind != api.EventHello {
		return fmt.Errorf("event stream did not start: %v", err)
	}
	w := &watcher{c: c, out: os.Stdout, open: map[engine.PromptID]api.Prompt{}, skipped: map[engine.PromptID]bool{},
		width: terminalWidth(int(os.Stdout.Fd()))}
	if st, err := c.Status(ctx); err == nil {
		w.def = st.Default.String()
	}

	fd := int(os.Stdin.Fd())
	w.interactive = term.IsTerminal(fd)
	if w.interactive {
		old, err := term.MakeRaw(fd)
		if err != nil {
			return fmt.Errorf("terminal: %w", err)
		}
		defer term.Restore(fd, old)
		w.out = crlf{os.Stdout}
	}

	events := make(chan api.Event, 64)
	streamErr := make(chan error, 1)
	go func() {
		for {
			ev, err := stream.Next()
			if err != nil {
				streamErr <- err
				return
			}
			events <- ev
		}
	}()
	input := make(chan string, 16)
	go readInput(os.Stdin, w.interactive, input)

	fmt.Fprintf(w.out, "latch watch: waiting for questions (%s)\n", map[bool]string{
		true: "press q to quit", false: "one answer per line; Ctrl-C quits"}[w.interactive])
	if err := w.refresh(ctx); err != nil {
		return err
	}
	tick := time.NewTicker(watchRefresh)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(w.out)
			return nil
		case err := <-streamErr:
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return errors.New("the daemon ended the event stream (stopped?)")
			}
			return err
		case ev := <-events:
			if ev.Kind == api.EventGap {
				// The daemon lost events for this client: list the questions now.
				if err := w.refresh(ctx); err != nil {
					return err
				}
				continue
			}
			w.event(ev)
		case <-tick.C:
			if err := w.refresh(ctx); err != nil {
				return err
			}
		case in, ok := <-input:
			if !ok {
				input = nil // end of input: go on showing questions
				continue
			}
			if quit := w.input(ctx, in); quit {
				fmt.Fprintln(w.out)
				return nil
			}
		}
	}
}

// readInput sends single keys (terminal) or whole lines.
func readInput(r io.Reader, keys bool, out chan<- string) {
	defer close(out)
	if keys {
		buf := make([]byte, 64)
		for {
			n, err := r.Read(buf)
			for _, b := range buf[:n] {
				out <- string(b)
			}
			if err != nil {
				return
			}
		}
	}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		out <- sc.Text()
	}
}

// refresh re-reads the open questions.
func (w *watcher) refresh(ctx context.Context) error {
	ps, err := w.c.Prompts(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	live := map[engine.PromptID]api.Prompt{}
	for _, p := range ps {
		live[p.ID] = p
	}
	for id := range w.open {
		if _, ok := live[id]; !ok {
			w.closed(id, nil)
		}
	}
	for _, p := range ps {
		if _, ok := w.open[p.ID]; !ok {
			w.add(p)
		}
	}
	return nil
}

func (w *watcher) event(ev api.Event) {
	switch ev.Kind {
	case api.EventPrompt:
		if ev.Prompt != nil {
			w.add(*ev.Prompt)
		}
	case api.EventAnswered:
		if ev.Prompt != nil {
			w.closed(ev.Prompt.ID, ev.Verdict)
		}
	}
}

func (w *watcher) add(p api.Prompt) {
	if _, ok := w.open[p.ID]; ok {
		w.open[p.ID] = p
		return
	}
	w.open[p.ID] = p
	if w.cur == nil {
		w.next()
	} else {
		exe, _ := w.shortExe(p.Exe, w.width()/2)
		fmt.Fprintf(w.out, "\n  (question %d queued: %s%s to %s)\n", p.ID, exe, identityTag(p.Exe, p.Identity, p.Container, p.ContainerName), w.remote(p))
		w.promptLine()
	}
}

func (w *watcher) closed(id engine.PromptID, v *engine.Verdict) {
	if _, ok := w.open[id]; !ok {
		return
	}
	delete(w.open, id)
	delete(w.skipped, id)
	if w.cur != nil && w.cur.ID == id {
		how := "closed"
		if v != nil {
			how = fmt.Sprintf("closed: %s (%s)", v.Action, textesc.String(string(v.Reason)))
		}
		fmt.Fprintf(w.out, "\nquestion %d %s\n", id, how)
		w.cur = nil
		w.next()
	}
}

// next shows the oldest open question not skipped.
func (w *watcher) next() {
	w.cur, w.stage = nil, stageAction
	ids := make([]engine.PromptID, 0, len(w.open))
	for id := range w.open {
		if !w.skipped[id] {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		fmt.Fprintln(w.out, "waiting for questions...")
		return
	}
	slices.Sort(ids)
	p := w.open[ids[0]]
	w.cur = &p
	// Everything from outside is escaped; on a terminal, long names are shortened so
	// that the question's number, the end of the program's path (its own name), the
	// user, the destination and the keys all stay on screen.
	width := w.width()
	user := userOf(p.User, p.UID)
	if width > 0 && p.User != "" {
		user, _ = shortField(p.User, 24)
	}
	head := fmt.Sprintf("question %d: ", p.ID)
	tail := identityTag(p.Exe, p.Identity, p.Container, p.ContainerName) + fmt.Sprintf(" (pid %s, user %s)", pidOrDash(p.PID), user)
	exe, cut := w.shortExe(p.Exe, width-textesc.Width(head)-textesc.Width(tail)-1)
	fmt.Fprintf(w.out, "\n%s%s%s\n", head, exe, tail)
	if cut {
		fmt.Fprintf(w.out, "  (path cut at %s, %d bytes in all: 'latch prompts --json' shows it whole)\n",
			textesc.Ellipsis, len(p.Exe))
	}
	if onceOnly(p) {
		fmt.Fprintf(w.out, "  NOT VERIFIED: %s; this program may not be the one its path names, so an answer applies to this question only\n", textesc.String(p.IdentityNote))
	}
	held := ""
	if p.Held > 1 {
		held = fmt.Sprintf(", %d connections held", p.Held)
	}
	def := w.def
	if def == "" {
		def = "the default"
	}
	fmt.Fprintf(w.out, "  wants %s %s to %s%s; %s in %s unless answered\n", p.Proto, p.Direction,
		w.remote(p), held, def, max(time.Until(p.Expires), 0).Round(time.Second))
	if p.Host != "" && p.HostSource == engine.HostShared {
		fmt.Fprintf(w.out, "  the name is another program's lookup: host rules and lists do not match it\n")
	}
	if p.Note != "" {
		fmt.Fprintf(w.out, "  NOTE: %s\n", textesc.String(p.Note))
	}
	if len(ids) > 1 {
		fmt.Fprintf(w.out, "  (%d more waiting)\n", len(ids)-1)
	}
	w.promptLine()
}

// shortExe shows an executable's path as a field and, on a terminal, in at most width
// cells (at least 24). It reports whether it was shortened.
func (w *watcher) shortExe(exe string, width int) (string, bool) {
	if exe == "" || w.width() == 0 {
		return exeOrUnknown(exe), false
	}
	return shortField(exe, max(width, 24))
}

// remote shows a question's destination, its hostname escaped and, on a terminal,
// shortened to half the screen.
func (w *watcher) remote(p api.Prompt) string {
	host := p.Host
	if width := w.width(); width > 0 && host != "" {
		if short, cut := shortField(host, max(width/2, 24)); cut {
			return short + " (" + textesc.String(p.RemoteIP) + "):" + strconv.Itoa(int(p.RemotePort))
		}
	}
	return hostPort(p.RemoteIP, p.RemotePort, host)
}

// terminalWidth returns a function giving fd's width in cells now (it follows
// resizes), or 0 when fd is not a terminal.
func terminalWidth(fd int) func() int {
	if !term.IsTerminal(fd) {
		return func() int { return 0 }
	}
	return func() int {
		if w, _, err := term.GetSize(fd); err == nil && w > 0 {
			return w
		}
		return 80
	}
}

func (w *watcher) promptLine() {
	if w.cur == nil {
		return
	}
	if !w.interactive {
		fmt.Fprintf(w.out, "answer %d> \n", w.cur.ID)
		return
	}
	switch w.stage {
	case stageAction:
		fmt.Fprint(w.out, "  [a]llow [d]eny [r]eject [s]kip [q]uit ? ")
	case stageFor:
		fmt.Fprintf(w.out, "  %s for: [o]nce [h]our [d]ay [f]orever ? ", w.action)
	case stageScope:
		fmt.Fprintf(w.out, "  %s %s, rule for: [1] app [2] app+host [3] app+port [4] app+host+port ? ", w.action, w.forStr)
	}
}

// input handles a key or a line; it returns true to quit.
func (w *watcher) input(ctx context.Context, in string) bool {
	if !w.interactive {
		return w.line(ctx, in)
	}
	switch in {
	case "\x03", "\x04": // Ctrl-C, Ctrl-D
		return true
	case "\x1b": // Esc: back a step
		if w.stage > stageAction {
			w.stage--
			fmt.Fprintln(w.out)
			w.promptLine()
		}
		return false
	}
	if w.cur == nil {
		if in == "q" {
			return true
		}
		return false
	}
	switch w.stage {
	case stageAction:
		switch in {
		case "a", "d", "r":
			w.action = map[string]string{"a": "allow", "d": "deny", "r": "reject"}[in]
			if onceOnly(*w.cur) {
				// No rule can be remembered for a program that is not verified.
				fmt.Fprintln(w.out, w.action, "once")
				w.send(ctx, w.cur.ID, api.AnswerRequest{Action: w.action, For: "once"})
				return false
			}
			w.stage = stageFor
			fmt.Fprintln(w.out, w.action)
			w.promptLine()
		case "s":
			fmt.Fprintln(w.out, "skipped")
			w.skipped[w.cur.ID] = true
			w.next()
		case "q":
			return true
		}
	case stageFor:
		f := map[string]string{"o": "once", "\r": "once", "\n": "once", "h": "1h", "d": "1d", "f": "forever"}[in]
		if f == "" {
			return false
		}
		w.forStr = f
		fmt.Fprintln(w.out, f)
		if f == "once" {
			w.send(ctx, w.cur.ID, api.AnswerRequest{Action: w.action, For: "once"})
			return false
		}
		w.stage = stageScope
		w.promptLine()
	case stageScope:
		s := map[string]string{"1": "app", "2": "app+host", "3": "app+port", "4": "app+host+port", "\r": "app+host+port", "\n": "app+host+port"}[in]
		if s == "" {
			return false
		}
		fmt.Fprintln(w.out, s)
		w.send(ctx, w.cur.ID, api.AnswerRequest{Action: w.action, For: w.forStr, Scope: s})
	}
	return false
}

// line handles one line of non-terminal input: [ID] ACTION [FOR] [SCOPE], skip, quit.
func (w *watcher) line(ctx context.Context, in string) bool {
	f := strings.Fields(in)
	if len(f) == 0 {
		return false
	}
	switch f[0] {
	case "q", "quit", "exit":
		return true
	case "s", "skip":
		if w.cur != nil {
			w.skipped[w.cur.ID] = true
			w.next()
		}
		return false
	}
	var id engine.PromptID
	if n, err := strconv.ParseUint(f[0], 10, 64); err == nil {
		id, f = engine.PromptID(n), f[1:]
	} else if w.cur != nil {
		id = w.cur.ID
	}
	if id == 0 {
		fmt.Fprintf(w.out, "no question to answer yet: %q ignored\n", in)
		return false
	}
	if len(f) == 0 || len(f) > 3 {
		fmt.Fprintf(w.out, "want ACTION [FOR] [SCOPE], got %q\n", in)
		return false
	}
	action := map[string]string{"a": "allow", "d": "deny", "r": "reject"}[f[0]]
	if action == "" {
		action = f[0]
	}
	req := api.AnswerRequest{Action: action, For: "once"}
	if len(f) > 1 {
		req.For = f[1]
	}
	if len(f) > 2 {
		req.Scope = f[2]
	}
	if _, err := api.ParseAnswer(req); err != nil {
		fmt.Fprintf(w.out, "%q: %s\n", in, textesc.Message(err.Error()))
		return false
	}
	w.send(ctx, id, req)
	return false
}

func (w *watcher) send(ctx context.Context, id engine.PromptID, req api.AnswerRequest) {
	if err := answer(ctx, w.out, w.c, id, req); err != nil {
		fmt.Fprintf(w.out, "question %d: %s\n", id, textesc.Message(err.Error()))
	}
	delete(w.open, id)
	delete(w.skipped, id)
	if w.cur != nil && w.cur.ID == id {
		w.cur = nil
		w.next()
	}
}
