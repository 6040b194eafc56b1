package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/textesc"
)

const promptsHelp = `Usage: latch prompts [--json]

Lists the connections waiting for a decision, oldest first, one per line. Identical
questions (same program, user, direction, protocol, remote address, port and hostname)
are asked once; the remote shows the hostname the program resolved, when latch saw it,
as "www.example.com (198.18.5.5):443". HELD says how many connections wait on it.
Unanswered, a question gets the daemon's --default verdict when it EXPIRES.

Paths, user and host names are shown with control and invisible characters escaped
(\x1b, \u{202E}: see "Text output" in the README); --json keeps them as they are.

  --json   one JSON object per line: id, pid, exe, uid, user, direction, proto,
           local_ip, local_port, remote_ip, remote_port, host (if known), netns (for
           a connection this host forwards: the sender's network namespace), held,
           opened, expires, and raw: the exact bytes (base64) of exe, user, cmdline
           or host where they are not valid UTF-8 (JSON text shows U+FFFD there)
`

const answerHelp = `Usage: latch answer ID allow|deny|reject|drop [--for once|DURATION|forever|until-exit|until-reboot] [--scope SCOPE]

Decides question ID (see 'latch prompts'): every connection waiting on it gets the
verdict. Unless --for is once (the default), the answer is also remembered as a rule
for the program, expiring after DURATION (90m, 12h, 7d) or never (forever), when the
process that asked exits (until-exit), or with this boot of the machine (until-reboot).

  --scope app            the rule matches the program, any destination
  --scope app+host       the program and this remote host: its hostname if known (the
                         rule then holds whatever address DNS gives next), else its address
  --scope app+port       the program and this remote port
  --scope app+host+port  the program, this host and this port (default)
  --scope app+unit       the program in this systemd unit (the question shows [unit ...])
  --scope unit           any program of this systemd unit
  --scope container      any program of this container ([container ...])
  --scope app-id         any program of this flatpak/snap app id, of this user
(the rule also keeps the question's direction and protocol)
`

func runPrompts(ctx context.Context, args []string) error {
	fs := newFlags("prompts")
	asJSON := fs.Bool("json", false, "one JSON object per line")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	ps, err := client().Prompts(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSONLines(ps)
	}
	if len(ps) == 0 {
		fmt.Println("no questions waiting")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tEXE\tPID\tUSER\tDIR\tPROTO\tREMOTE\tHELD\tEXPIRES\tNETNS")
	now := time.Now()
	for _, p := range ps {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\tin %s\t%s\n", p.ID, programOf(p.Exe, p.Identity, p.Container, p.ContainerName)+identityLabels(p.Unit, p.AppID, p.Parents), pidOrDash(p.PID),
			userOf(p.User, p.UID), p.Direction, p.Proto, remoteOf(p.RemoteIP, p.RemotePort, p.Host, p.HostSource, p.Note), p.Held,
			max(p.Expires.Sub(now), 0).Round(time.Second), field(p.Netns))
	}
	defer func() {
		for _, p := range ps {
			if p.Note != "" {
				fmt.Printf("question %d: %s\n", p.ID, textesc.String(p.Note))
			}
		}
	}()
	return tw.Flush()
}

// exeOrUnknown shows an executable's path as a field (escaped, see field).
func exeOrUnknown(exe string) string {
	if exe == "" {
		return "(unknown)"
	}
	return field(exe)
}

func pidOrDash(pid int32) string {
	if pid == 0 {
		return "-"
	}
	return strconv.Itoa(int(pid))
}

// userOf shows an account: its name, escaped, else its uid.
func userOf(user string, uid int32) string {
	switch {
	case user != "":
		return field(user)
	case uid >= 0:
		return strconv.Itoa(int(uid))
	}
	return "-"
}

// hostPort shows a remote: "198.18.5.5:443", "[2001:2::5]:443", or with the hostname
// the program resolved "www.example.com (198.18.5.5):443". The hostname comes from
// DNS, where a label may hold any byte: it is escaped.
// remoteOf is hostPort for a remote end, saying when its name is another program's
// lookup (host_source "shared": host rules and lists do not match it by default) and when the
// connection goes to an encrypted DNS service.
func remoteOf(ip string, port uint16, host, source, note string) string {
	s := hostPort(ip, port, host)
	if host != "" && source == engine.HostShared {
		s += " [name shared]"
	}
	if note != "" {
		s += " [" + textesc.String(note) + "]"
	}
	return s
}

func hostPort(ip string, port uint16, host string) string {
	if ip == "" {
		return "-"
	}
	if host != "" {
		return field(host) + " (" + textesc.String(ip) + "):" + strconv.Itoa(int(port))
	}
	return textesc.String(net.JoinHostPort(ip, strconv.Itoa(int(port))))
}

func runAnswer(ctx context.Context, args []string) error {
	fs := newFlags("answer")
	forStr := fs.String("for", "once", "once, forever or a duration such as 1h or 7d")
	scope := fs.String("scope", "app+host+port", "app, app+host, app+port, app+host+port, app+unit, unit, container or app-id")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 2, "a question ID and allow, deny, reject or drop"); err != nil {
		return err
	}
	id, err := strconv.ParseUint(pos[0], 10, 64)
	if err != nil || id == 0 {
		return usagef("question ID %q: want a positive number (see 'latch prompts')", pos[0])
	}
	req := api.AnswerRequest{Action: pos[1], For: *forStr, Scope: *scope}
	if _, err := api.ParseAnswer(req); err != nil {
		return usagef("%v", err)
	}
	return answer(ctx, os.Stdout, client(), engine.PromptID(id), req)
}

// answer sends an answer and says what it did.
func answer(ctx context.Context, w io.Writer, c *api.Client, id engine.PromptID, req api.AnswerRequest) error {
	rule, err := c.Answer(ctx, id, req)
	if err != nil {
		return err
	}
	if rule == nil {
		fmt.Fprintf(w, "question %d: %s once\n", id, textesc.String(req.Action))
	} else {
		fmt.Fprintf(w, "question %d: %s; added rule %d: %s\n", id, textesc.String(req.Action), rule.ID, rule)
	}
	return nil
}
