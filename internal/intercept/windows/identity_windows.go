//go:build windows

package windows

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/windows"
)

// systemQueriers returns Windows' own answers about devices, processes and services.
func systemQueriers() (DeviceQuerier, ProcessQuerier, ServiceQuerier) {
	return winDevices{}, &winProcesses{accounts: make(map[string]string)}, winServices{}
}

// winDevices reads the drive table with QueryDosDevice.
type winDevices struct{}

func (winDevices) DosDevices() (map[string]string, error) {
	mask, err := windows.GetLogicalDrives()
	if err != nil {
		return nil, fmt.Errorf("GetLogicalDrives: %w", err)
	}
	out := make(map[string]string)
	buf := make([]uint16, 1024)
	for i := 0; i < 26; i++ {
		if mask&(1<<i) == 0 {
			continue
		}
		drive := string(rune('A'+i)) + ":"
		name, _ := windows.UTF16PtrFromString(drive)
		n, err := windows.QueryDosDevice(name, &buf[0], uint32(len(buf)))
		if err != nil || n == 0 {
			continue // a drive letter without a device (a stale mapping) maps nothing
		}
		// The answer is a list of NUL-terminated strings; the first is the current target.
		out[drive] = windows.UTF16ToString(buf[:n])
	}
	return out, nil
}

// winProcesses asks the process token and image name; it caches SID -> account,
// because LookupAccountSid may ask a domain controller.
type winProcesses struct {
	mu       sync.Mutex
	accounts map[string]string
}

func (w *winProcesses) ProcessUser(pid uint32) (string, string, error) {
	h, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, pid)
	if err != nil {
		return "", "", fmt.Errorf("OpenProcess %d: %w", pid, err)
	}
	defer windows.CloseHandle(h)
	var tok windows.Token
	if err := windows.OpenProcessToken(h, windows.TOKEN_QUERY, &tok); err != nil {
		return "", "", fmt.Errorf("OpenProcessToken %d: %w", pid, err)
	}
	defer tok.Close()
	tu, err := tok.GetTokenUser()
	if err != nil {
		return "", "", fmt.Errorf("GetTokenUser %d: %w", pid, err)
	}
	sid := tu.User.Sid.String()
	w.mu.Lock()
	acct, ok := w.accounts[sid]
	w.mu.Unlock()
	if ok {
		return acct, sid, nil
	}
	name, domain, _, err := tu.User.Sid.LookupAccount("")
	if err != nil {
		return sid, sid, nil // an unresolvable SID is still a user; show it as a SID
	}
	acct = name
	if domain != "" {
		acct = domain + `\` + name
	}
	w.mu.Lock()
	if len(w.accounts) > 1024 {
		w.accounts = make(map[string]string)
	}
	w.accounts[sid] = acct
	w.mu.Unlock()
	return acct, sid, nil
}

func (w *winProcesses) ProcessImage(pid uint32) (string, error) {
	h, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, pid)
	if err != nil {
		return "", fmt.Errorf("OpenProcess %d: %w", pid, err)
	}
	defer windows.CloseHandle(h)
	buf := make([]uint16, 32768)
	size := uint32(len(buf))
	if err := windows.QueryFullProcessImageName(h, 0, &buf[0], &size); err != nil {
		return "", fmt.Errorf("QueryFullProcessImageName %d: %w", pid, err)
	}
	return windows.UTF16ToString(buf[:size]), nil
}

// winServices lists running Win32 services with their process ids.
type winServices struct{}

func (winServices) ServicesByPID() (map[uint32][]string, error) {
	scm, err := windows.OpenSCManager(nil, nil, windows.SC_MANAGER_ENUMERATE_SERVICE)
	if err != nil {
		return nil, fmt.Errorf("OpenSCManager: %w", err)
	}
	defer windows.CloseServiceHandle(scm)
	var needed, returned uint32
	var buf []byte
	for {
		var p *byte
		if len(buf) > 0 {
			p = &buf[0]
		}
		err = windows.EnumServicesStatusEx(scm, windows.SC_ENUM_PROCESS_INFO, windows.SERVICE_WIN32,
			windows.SERVICE_ACTIVE, p, uint32(len(buf)), &needed, &returned, nil, nil)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.ERROR_MORE_DATA) || needed <= uint32(len(buf)) {
			return nil, fmt.Errorf("EnumServicesStatusEx: %w", err)
		}
		buf = make([]byte, needed)
	}
	out := make(map[uint32][]string)
	if returned == 0 {
		return out, nil
	}
	list := unsafe.Slice((*windows.ENUM_SERVICE_STATUS_PROCESS)(unsafe.Pointer(&buf[0])), int(returned))
	for _, s := range list {
		pid := s.ServiceStatusProcess.ProcessId
		if pid == 0 {
			continue
		}
		out[pid] = append(out[pid], windows.UTF16PtrToString(s.ServiceName))
	}
	return out, nil
}
