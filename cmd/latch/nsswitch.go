package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
)

// nsswitchConf is the file hostsViaResolve reads.
const nsswitchConf = "/etc/nsswitch.conf"

// nsswitchMax is the most of nsswitch.conf hostsViaResolve reads (real ones are a
// few hundred bytes).
const nsswitchMax = 1 << 20

// readNsswitch reads the regular file at path, at most nsswitchMax bytes. Anything
// but a regular file (a FIFO, a device: a read that blocks or never ends) is
// refused; the open itself does not block (O_NONBLOCK: a FIFO with no writer). A
// symbolic link is followed: nsswitch.conf is one on some systems.
func readNsswitch(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%v)", path, fi.Mode().Type())
	}
	return io.ReadAll(io.LimitReader(f, nsswitchMax))
}

// hostsViaResolve reports whether the hosts line of the nsswitch.conf at path names
// the resolve service (systemd-resolved's nss-resolve, Fedora's default): programs
// that resolve through it ask systemd-resolved over its socket, which sends the query
// itself, so latch learns every name they use as shared, not as theirs. False if
// the file cannot be read (or is not a regular file).
func hostsViaResolve(path string) bool {
	data, err := readNsswitch(path)
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, nsswitchMax)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		db, services, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(db) != "hosts" {
			continue
		}
		for _, f := range serviceNames(services) {
			if f == "resolve" {
				return true
			}
		}
		return false
	}
	return false
}

// serviceNames returns the service names of an nsswitch.conf database line (after
// the colon), without the actions: as glibc's nss_parse_service_list, a name ends
// at white space or '[', and an action list runs from '[' to ']'
// ("resolve[!UNAVAIL=return]", "resolve [ !UNAVAIL = return ]").
func serviceNames(services string) []string {
	var names []string
	for s := services; s != ""; {
		switch c := s[0]; {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f':
			s = s[1:]
		case c == '[':
			if _, rest, ok := strings.Cut(s, "]"); ok {
				s = rest
			} else {
				s = ""
			}
		default:
			end := strings.IndexAny(s, " \t\r\n\v\f[")
			if end < 0 {
				end = len(s)
			}
			names = append(names, s[:end])
			s = s[end:]
		}
	}
	return names
}

// sharedNamesWarning is the warning the daemon logs when lists naming hostnames
// (withHosts) are in force, programs resolve through systemd-resolved (nsswitch.conf
// at path) and shared names do not match (matchShared off); "" otherwise.
func sharedNamesWarning(withHosts []string, matchShared bool, path string) string {
	if len(withHosts) == 0 || matchShared || !hostsViaResolve(path) {
		return ""
	}
	return "warning: lists " + strings.Join(withHosts, ", ") + " name hostnames, but the hosts line of " + path +
		" has resolve (systemd-resolved): programs' names are then learned as shared, and lists match only a " +
		"program's own names, so these lists match by address only; --host-rules-match-shared makes them (and host " +
		"rules) match shared names, which any local user can set"
}

// onChange calls log with a message only when it differs from the one before
// (the shared names warning after each list update: logged when it appears or its
// lists change, not again for every update).
type onChange struct {
	mu   sync.Mutex
	last string
}

// report logs msg (if not "") unless it is the message reported last.
func (c *onChange) report(msg string, log func(string)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if msg == c.last {
		return
	}
	c.last = msg
	if msg != "" {
		log(msg)
	}
}
