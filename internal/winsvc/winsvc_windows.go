//go:build windows

package winsvc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/windows"
	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/eventlog"
	"golang.org/x/sys/windows/svc/mgr"

	"github.com/latchfw/latch/internal/textesc"
)

var (
	stdout io.Writer = os.Stdout
	stderr io.Writer = os.Stderr
)

// DataDir returns where latch keeps its state by default: %ProgramData%\latch.
func DataDir() string {
	base := os.Getenv("ProgramData")
	if base == "" {
		if p, err := windows.KnownFolderPath(windows.FOLDERID_ProgramData, 0); err == nil {
			base = p
		} else {
			base = `C:\ProgramData`
		}
	}
	return filepath.Join(base, "latch")
}

// stateDirSDDL admits SYSTEM and Administrators only, inherited by what is created
// inside: the rules and the connection history are nobody else's business.
const stateDirSDDL = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"

func commandTo(args []string, out, errOut io.Writer) error {
	c, err := parse(args, errOut)
	if err != nil {
		return err
	}
	switch c.verb {
	case "help":
		_, err := io.WriteString(out, Usage)
		return err
	case "install":
		return install(c, out)
	case "uninstall":
		return uninstall(c, out)
	case "start":
		return start(c, out)
	case "stop":
		return stop(c, out)
	case "status":
		return status(c, out)
	}
	return fmt.Errorf("latch service: unknown command %q", c.verb)
}

func connect() (*mgr.Mgr, error) {
	m, err := mgr.Connect()
	if err != nil {
		if errors.Is(err, windows.ERROR_ACCESS_DENIED) {
			return nil, fmt.Errorf("latch service: connect to the service control manager: %w (run as Administrator)", err)
		}
		return nil, fmt.Errorf("latch service: connect to the service control manager: %w", err)
	}
	return m, nil
}

// openService connects to the service control manager and opens the service name;
// closeService releases both.
func openService(name string) (s *mgr.Service, closeService func(), err error) {
	m, err := connect()
	if err != nil {
		return nil, nil, err
	}
	s, err = m.OpenService(name)
	if err != nil {
		m.Disconnect()
		if errors.Is(err, windows.ERROR_SERVICE_DOES_NOT_EXIST) {
			return nil, nil, fmt.Errorf("latch service: no service named %q is installed (latch service install)", name)
		}
		return nil, nil, fmt.Errorf("latch service: open service %q: %w", name, err)
	}
	return s, func() { s.Close(); m.Disconnect() }, nil
}

func install(c command, out io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("latch service install: find this program's path: %w", err)
	}
	if exe, err = filepath.Abs(exe); err != nil {
		return fmt.Errorf("latch service install: %w", err)
	}
	dir := DataDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("latch service install: create state directory %s: %w", dir, err)
	}
	if err := secureDir(dir); err != nil {
		return fmt.Errorf("latch service install: restrict state directory %s: %w", dir, err)
	}
	m, err := connect()
	if err != nil {
		return err
	}
	defer m.Disconnect()
	if s, err := m.OpenService(c.name); err == nil {
		s.Close()
		return fmt.Errorf("latch service install: a service named %q already exists (latch service uninstall first)", c.name)
	}
	cfg := mgr.Config{
		DisplayName:  DisplayName,
		Description:  Description,
		StartType:    mgr.StartAutomatic,
		ErrorControl: mgr.ErrorNormal,
		SidType:      windows.SERVICE_SID_TYPE_UNRESTRICTED,
	}
	if c.manual {
		cfg.StartType = mgr.StartManual
	}
	if c.driver != "" {
		cfg.Dependencies = []string{c.driver}
	}
	s, err := m.CreateService(c.name, exe, cfg, append([]string{"daemon"}, c.daemonArgs...)...)
	if err != nil {
		return fmt.Errorf("latch service install: create service %q: %w", c.name, err)
	}
	defer s.Close()
	undo := func(why error) error {
		s.Delete()
		return why
	}
	actions := []mgr.RecoveryAction{
		{Type: mgr.ServiceRestart, Delay: 5 * time.Second},
		{Type: mgr.ServiceRestart, Delay: 30 * time.Second},
		{Type: mgr.ServiceRestart, Delay: 2 * time.Minute},
	}
	if err := s.SetRecoveryActions(actions, 24*60*60); err != nil {
		return undo(fmt.Errorf("latch service install: set recovery actions: %w", err))
	}
	if err := s.SetRecoveryActionsOnNonCrashFailures(true); err != nil {
		return undo(fmt.Errorf("latch service install: set recovery on failure exit: %w", err))
	}
	if err := eventlog.InstallAsEventCreate(c.name, eventlog.Error|eventlog.Warning|eventlog.Info); err != nil &&
		!strings.Contains(err.Error(), "registry key already exists") {
		return undo(fmt.Errorf("latch service install: register event log source %q: %w", c.name, err))
	}
	fmt.Fprintf(out, "installed service %q: %s daemon %s\nstate directory: %s\nstart it with: latch service start\n",
		c.name, textesc.String(exe), textesc.String(strings.Join(c.daemonArgs, " ")), textesc.String(dir))
	return nil
}

func secureDir(dir string) error {
	sd, err := windows.SecurityDescriptorFromString(stateDirSDDL)
	if err != nil {
		return err
	}
	dacl, _, err := sd.DACL()
	if err != nil {
		return err
	}
	return windows.SetNamedSecurityInfo(dir, windows.SE_FILE_OBJECT,
		windows.DACL_SECURITY_INFORMATION|windows.PROTECTED_DACL_SECURITY_INFORMATION, nil, nil, dacl, nil)
}

func uninstall(c command, out io.Writer) error {
	s, closeService, err := openService(c.name)
	if err != nil {
		return err
	}
	defer closeService()
	if st, err := s.Query(); err == nil && st.State != svc.Stopped {
		if err := stopAndWait(s, c.name); err != nil {
			return err
		}
	}
	if err := s.Delete(); err != nil {
		return fmt.Errorf("latch service uninstall: delete service %q: %w", c.name, err)
	}
	if err := eventlog.Remove(c.name); err != nil {
		fmt.Fprintf(out, "note: event log source %q not removed: %v\n", c.name, err)
	}
	fmt.Fprintf(out, "removed service %q (the state directory %s is kept)\n", c.name, DataDir())
	return nil
}

func start(c command, out io.Writer) error {
	s, closeService, err := openService(c.name)
	if err != nil {
		return err
	}
	defer closeService()
	if err := s.Start(); err != nil {
		return fmt.Errorf("latch service start %q: %w", c.name, err)
	}
	st, err := waitFor(s, StopTimeout, func(st svc.State) bool { return st != svc.StartPending })
	if err != nil {
		return fmt.Errorf("latch service start %q: %w", c.name, err)
	}
	if st.State != svc.Running {
		return fmt.Errorf("latch service start %q: the service %s instead of running (exit code %d, service code %d); "+
			"see the Application event log, source %q", c.name, stateName(st.State), st.Win32ExitCode, st.ServiceSpecificExitCode, c.name)
	}
	fmt.Fprintf(out, "service %q is running (pid %d)\n", c.name, st.ProcessId)
	return nil
}

func stop(c command, out io.Writer) error {
	s, closeService, err := openService(c.name)
	if err != nil {
		return err
	}
	defer closeService()
	if err := stopAndWait(s, c.name); err != nil {
		return err
	}
	fmt.Fprintf(out, "service %q stopped\n", c.name)
	return nil
}

func stopAndWait(s *mgr.Service, name string) error {
	if _, err := s.Control(svc.Stop); err != nil && !errors.Is(err, windows.ERROR_SERVICE_NOT_ACTIVE) {
		return fmt.Errorf("latch service stop %q: %w", name, err)
	}
	if _, err := waitFor(s, StopTimeout, func(st svc.State) bool { return st == svc.Stopped }); err != nil {
		return fmt.Errorf("latch service stop %q: %w", name, err)
	}
	return nil
}

func status(c command, out io.Writer) error {
	s, closeService, err := openService(c.name)
	if err != nil {
		return err
	}
	defer closeService()
	st, err := s.Query()
	if err != nil {
		return fmt.Errorf("latch service status %q: %w", c.name, err)
	}
	cfg, err := s.Config()
	if err != nil {
		return fmt.Errorf("latch service status %q: %w", c.name, err)
	}
	fmt.Fprintf(out, "service %q: %s", c.name, stateName(st.State))
	if st.State == svc.Running {
		fmt.Fprintf(out, " (pid %d)", st.ProcessId)
	}
	// The service's command line is whatever the service control manager holds.
	fmt.Fprintf(out, "\ncommand: %s\n", textesc.String(cfg.BinaryPathName))
	return nil
}

// waitFor polls the service's state until done says so or timeout passes.
func waitFor(s *mgr.Service, timeout time.Duration, done func(svc.State) bool) (svc.Status, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := s.Query()
		if err != nil {
			return st, err
		}
		if done(st.State) {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("still %s after %v", stateName(st.State), timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func stateName(s svc.State) string {
	switch s {
	case svc.Stopped:
		return "stopped"
	case svc.StartPending:
		return "starting"
	case svc.StopPending:
		return "stopping"
	case svc.Running:
		return "running"
	case svc.ContinuePending:
		return "continuing"
	case svc.PausePending:
		return "pausing"
	case svc.Paused:
		return "paused"
	}
	return fmt.Sprintf("state %d", s)
}

// RunIfService runs run as a Windows service if the service control manager started
// this process, and returns true with run's error once the service has stopped. run
// gets a context that ends when Windows asks the service to stop or shut down; it
// has StopTimeout to return. While it runs, the standard logger writes to the
// Application event log (source: the service's name). If this process is not a
// service, RunIfService returns false at once and does nothing.
func RunIfService(run func(ctx context.Context) error) (isService bool, err error) {
	isSvc, err := svc.IsWindowsService()
	if err != nil {
		return false, fmt.Errorf("latch: is this a Windows service? %w", err)
	}
	if !isSvc {
		return false, nil
	}
	h := &handler{run: run}
	if err := svc.Run(ServiceName, h); err != nil {
		return true, fmt.Errorf("latch service: %w", err)
	}
	return true, h.err
}

type handler struct {
	run func(ctx context.Context) error
	err error
}

func (h *handler) Execute(args []string, r <-chan svc.ChangeRequest, changes chan<- svc.Status) (bool, uint32) {
	name := ServiceName
	if len(args) > 0 && args[0] != "" {
		name = args[0]
	}
	var elog eventLogger
	if l, err := eventlog.Open(name); err == nil {
		defer l.Close()
		elog = l
		prevOut, prevFlags := log.Writer(), log.Flags()
		log.SetOutput(&eventWriter{elog: l})
		log.SetFlags(0) // the event log stamps the time
		defer func() { log.SetOutput(prevOut); log.SetFlags(prevFlags) }()
	}
	stop := make(chan struct{})
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		for {
			select {
			case c := <-r:
				switch c.Cmd {
				case svc.Interrogate:
					changes <- c.CurrentStatus
				case svc.Stop, svc.Shutdown:
					close(stop)
					return
				}
			case <-finished:
				return
			}
		}
	}()
	report := func(s svcState) {
		switch s {
		case stateStartPending:
			changes <- svc.Status{State: svc.StartPending}
		case stateRunning:
			changes <- svc.Status{State: svc.Running, Accepts: svc.AcceptStop | svc.AcceptShutdown}
		case stateStopPending:
			changes <- svc.Status{State: svc.StopPending, WaitHint: uint32(StopTimeout / time.Millisecond)}
		}
	}
	err, failed := serve(name, h.run, stop, report, elog, StopTimeout)
	h.err = err
	if failed {
		return true, 1 // a service-specific failure: the recovery actions restart it
	}
	return false, 0
}
