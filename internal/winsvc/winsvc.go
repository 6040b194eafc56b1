// Package winsvc runs latch as a Windows service: `latch service install`,
// `uninstall`, `start`, `stop` and `status` (Command), running under the service
// control manager with its log in the Windows event log (RunIfService), and the
// Windows defaults for where latch keeps its state (DataDir).
//
// Command's argument parsing is platform-neutral and tested everywhere; the service
// control calls (golang.org/x/sys/windows/svc, svc/mgr, svc/eventlog) exist only in
// the Windows build and are tested only on Windows. On other platforms Command
// explains that services are a Windows matter and RunIfService does nothing.
package winsvc

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// ServiceName is the Windows service's default name. The driver has its own service
// (DriverServiceName); the two must differ.
const ServiceName = "latchsvc"

// DriverServiceName is the default name of the driver's service (driver/latch.inf),
// which the latch service depends on so that Windows starts the driver first.
const DriverServiceName = "latch"

// DisplayName and Description are what services.msc shows.
const (
	DisplayName = "latch firewall"
	Description = "latch per-application firewall: decides every new connection held by the latch WFP driver."
)

// StopTimeout bounds how long stop and uninstall wait for the service to stop, and
// how long the service gives the daemon to finish once asked to stop.
const StopTimeout = 30 * time.Second

// Usage is the help text of `latch service`.
const Usage = `usage: latch service <command> [flags]

commands:
  install [--name NAME] [--driver NAME] [--manual] [-- DAEMON FLAGS...]
        register latch as a service that runs "latch daemon DAEMON FLAGS..." as
        LocalSystem, starts at boot (unless --manual), depends on the driver's
        service (--driver "" for none), restarts after a failure, and logs to the
        Application event log; create the state directory (DataDir) readable by
        SYSTEM and Administrators only
  uninstall [--name NAME]   stop the service if it runs and remove it
  start [--name NAME]       start the service and wait until it runs
  stop [--name NAME]        stop the service and wait until it has stopped
  status [--name NAME]      print the service's state
`

// ErrNotWindows is returned by Command on other platforms.
var ErrNotWindows = errors.New("latch service: Windows services exist only on Windows; on Linux run `latch daemon` under systemd or another supervisor")

// command is a parsed `latch service` invocation.
type command struct {
	verb       string
	name       string
	driver     string
	manual     bool
	daemonArgs []string
}

// parse parses the arguments after `latch service`.
func parse(args []string, stderr io.Writer) (command, error) {
	if len(args) == 0 {
		return command{}, fmt.Errorf("latch service: missing command\n%s", Usage)
	}
	c := command{verb: args[0]}
	fs := flag.NewFlagSet("latch service "+c.verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.name, "name", ServiceName, "the service's name")
	switch c.verb {
	case "install":
		fs.StringVar(&c.driver, "driver", DriverServiceName, `the driver's service, started first ("" for no dependency)`)
		fs.BoolVar(&c.manual, "manual", false, "start on demand instead of at boot")
	case "uninstall", "start", "stop", "status":
	case "help", "-h", "--help":
		return command{verb: "help"}, nil
	default:
		return command{}, fmt.Errorf("latch service: unknown command %q\n%s", c.verb, Usage)
	}
	if err := fs.Parse(args[1:]); err != nil {
		return command{}, fmt.Errorf("latch service %s: %w", c.verb, err)
	}
	rest := fs.Args()
	if c.verb == "install" {
		// flag stops at "--" and swallows it; what follows is the daemon's.
		c.daemonArgs = rest
		for _, a := range rest {
			if strings.ContainsAny(a, "\"\r\n") {
				return command{}, fmt.Errorf("latch service install: daemon argument %q: quotes and line breaks are not allowed", a)
			}
		}
	} else if len(rest) > 0 {
		return command{}, fmt.Errorf("latch service %s: unexpected argument %q", c.verb, rest[0])
	}
	if err := checkName("--name", c.name, false); err != nil {
		return command{}, err
	}
	if err := checkName("--driver", c.driver, true); err != nil {
		return command{}, err
	}
	if c.verb == "install" && strings.EqualFold(c.name, c.driver) {
		return command{}, fmt.Errorf("latch service install: --name and --driver are both %q; the service and the driver need their own names", c.name)
	}
	return c, nil
}

// checkName validates a service name: 1..256 characters, no slashes (the service
// control manager forbids / and \).
func checkName(flagName, s string, emptyOK bool) error {
	if s == "" && emptyOK {
		return nil
	}
	if s == "" || len(s) > 256 || strings.ContainsAny(s, `/\`) {
		return fmt.Errorf("latch service: %s %q: want 1 to 256 characters without / or \\", flagName, s)
	}
	return nil
}

// Command runs `latch service ARGS...` (ARGS without "service"), printing what it did
// to stdout.
func Command(args []string) error {
	return commandTo(args, stdout, stderr)
}
