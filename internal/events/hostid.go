package events

import (
	"os"
	"strings"
)

// DefaultHostID is the default --host-id: the machine id (/etc/machine-id, else
// /var/lib/dbus/machine-id), else the hostname.
func DefaultHostID() string {
	for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
		if b, err := os.ReadFile(p); err == nil {
			if id := strings.TrimSpace(string(b)); id != "" {
				return id
			}
		}
	}
	h, _ := os.Hostname()
	return h
}
