package main

import (
	"strings"

	"github.com/latchfw/latch/internal/api"
	"github.com/latchfw/latch/internal/engine"
)

// programOf is how text output shows a program: its path, marked when the path is
// not verified to be the host's file the process runs ("[unverified]"), or is a
// container's ("[container docker:0123456789ab web-1]", with the name the runtime
// gives the container when latch read one). App rules do not match such a program,
// and an answer about it is for that question only.
func programOf(exe string, id engine.Identity, container, name string) string {
	return exeOrUnknown(exe) + identityTag(exe, id, container, name)
}

// identityTag is what follows a program's path in text: " [unverified]",
// " [container RUNTIME:ID NAME]" (NAME escaped; for a user's own container,
// "RUNTIME@UID:ID", marked as that user's name), or nothing for a verified program
// (or one recorded before latch checked identities, or no program at all).
func identityTag(exe string, id engine.Identity, container, name string) string {
	if exe == "" {
		return ""
	}
	switch id {
	case engine.IdentityUnverified:
		return " [unverified]"
	case engine.IdentityContainer:
		return " [container " + shortContainer(container) + containerNameTag(container, name) + "]"
	}
	return ""
}

// containerNameTag is how text shows the runtime's name of container: " NAME"
// escaped (quoted where it holds a space), and for a user's own container
// ("RUNTIME@UID:ID") " NAME (its user's name)", since that user's files gave it;
// "" without a name.
func containerNameTag(container, name string) string {
	if name == "" {
		return ""
	}
	if rt, _, _ := strings.Cut(container, ":"); strings.Contains(rt, "@") {
		return " " + field(name) + " (its user's name)"
	}
	return " " + field(name)
}

// shortContainer shortens "RUNTIME:ID" with a 64-digit id to 12 digits, as docker
// and podman show ids.
func shortContainer(c string) string {
	if rt, id, ok := strings.Cut(c, ":"); ok && len(id) == 64 {
		return rt + ":" + id[:12]
	}
	return c
}

// onceOnly reports whether a question can only be answered once: its program is known
// but not verified, so the daemon refuses to remember a rule for its path.
func onceOnly(p api.Prompt) bool {
	return p.Exe != "" && p.Identity != engine.IdentityVerified
}

// identityLabels is what follows a program in text beyond its identity tag: its
// systemd unit, app id and parent, e.g. " [unit nginx.service] [parent /usr/bin/bash]",
// each escaped (and quoted where it holds a space), or "".
func identityLabels(unit, appID string, parents []string) string {
	var b strings.Builder
	for _, l := range []struct{ k, v string }{{"unit", unit}, {"app-id", appID}} {
		if l.v != "" {
			b.WriteString(" [" + l.k + " " + field(l.v) + "]")
		}
	}
	if len(parents) > 0 {
		p := "(unverified)"
		if parents[0] != "" {
			p = field(parents[0])
		}
		b.WriteString(" [parent " + p + "]")
	}
	return b.String()
}
