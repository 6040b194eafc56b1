package engine

import (
	"fmt"
	"path"
	"strings"
)

// appPattern is a compiled Rule.App: an exact path or a glob split into segments.
type appPattern struct {
	raw     string
	windows bool     // Windows path: '\' separates, case-insensitive
	glob    bool     // has wildcards
	key     string   // exact: the path to compare (lower-cased for Windows)
	segs    []string // glob: segments; "**" matches any number of segments
	literal []bool   // glob: segment has no wildcard
	base    string   // glob: last segment if literal (lower-cased for Windows), else ""
	depth   int      // glob: number of leading literal segments
	prefix  string   // glob: those segments joined by '/'
}

// isWindowsPath reports whether p looks like a Windows path: "C:\..." or "\\server\...".
func isWindowsPath(p string) bool {
	if len(p) >= 3 && p[1] == ':' && p[2] == '\\' {
		c := p[0] | 0x20
		return 'a' <= c && c <= 'z'
	}
	return strings.HasPrefix(p, `\\`)
}

func hasMeta(s string, windows bool) bool {
	if windows {
		return strings.ContainsAny(s, "*?[")
	}
	return strings.ContainsAny(s, `*?[\`)
}

// normalizeWindows lower-cases a Windows path and turns its separators into '/'.
func normalizeWindows(p string) string {
	return strings.ReplaceAll(strings.ToLower(p), `\`, "/")
}

func compileApp(p string) (*appPattern, error) {
	if p == "" {
		return nil, nil
	}
	if strings.ContainsAny(p, "\x00\n") {
		return nil, fmt.Errorf("control character in path")
	}
	a := &appPattern{raw: p, windows: isWindowsPath(p)}
	a.glob = hasMeta(p, a.windows)
	norm := p
	if a.windows {
		norm = normalizeWindows(p)
	}
	if !a.glob {
		a.key = p
		if a.windows {
			a.key = strings.ToLower(p)
		}
		return a, nil
	}
	a.segs = strings.Split(norm, "/")
	a.literal = make([]bool, len(a.segs))
	for i, s := range a.segs {
		if s == "**" {
			continue
		}
		if strings.Contains(s, "**") {
			return nil, fmt.Errorf("%q: \"**\" must be a whole path segment", s)
		}
		if _, err := path.Match(s, ""); err != nil {
			return nil, fmt.Errorf("bad glob segment %q: %v", s, err)
		}
		a.literal[i] = !hasMeta(s, false)
	}
	if last := len(a.segs) - 1; a.literal[last] && a.segs[last] != "" {
		a.base = a.segs[last]
	}
	for a.depth < len(a.segs) && a.segs[a.depth] != "**" && a.literal[a.depth] {
		a.depth++
	}
	a.prefix = strings.Join(a.segs[:a.depth], "/")
	return a, nil
}

// validateApp checks a rule's App: an absolute path, clean (no "." or ".." segment,
// no empty one), exact or glob. Executables are always named by such paths, so any
// other pattern could never match; "**/curl" is written "/**/curl".
func validateApp(p string) error {
	if p == "" {
		return nil
	}
	switch {
	case isWindowsPath(p) || strings.HasPrefix(p, `\`): // C:\..., \server\..., \Device\...
	case strings.HasPrefix(p, "/"):
		for i, seg := range strings.Split(p[1:], "/") {
			if seg == "" || seg == "." || seg == ".." {
				return fmt.Errorf("not a clean absolute path: segment %d is %q (write the path as the program's executable is named, e.g. /usr/bin/curl)", i+1, seg)
			}
		}
	default:
		return fmt.Errorf("not an absolute path: want an executable such as /usr/bin/curl or a glob such as /usr/lib/firefox/** (relative paths never match)")
	}
	_, err := compileApp(p)
	return err
}

// match reports whether exe matches the pattern. An unknown exe ("") matches nothing.
func (a *appPattern) match(exe string) bool {
	if exe == "" {
		return false
	}
	if a.windows {
		if !isWindowsPath(exe) {
			return false
		}
		if !a.glob {
			return strings.EqualFold(a.raw, exe)
		}
		return matchSegments(a.segs, a.literal, normalizeWindows(exe))
	}
	if !a.glob {
		return a.raw == exe
	}
	return matchSegments(a.segs, a.literal, exe)
}

// appMatches is the uncompiled form of appPattern.match, for Rule.Matches.
func appMatches(pattern, exe string) bool {
	a, err := compileApp(pattern)
	if err != nil || a == nil {
		return a == nil && err == nil
	}
	return a.match(exe)
}

// nextSegment returns the '/'-separated segment of name starting at i and the index
// where the next one starts (len(name)+1 after the last).
func nextSegment(name string, i int) (string, int) {
	if j := strings.IndexByte(name[i:], '/'); j >= 0 {
		return name[i : i+j], i + j + 1
	}
	return name[i:], len(name) + 1
}

// matchSegments matches name against glob segments. Every segment but "**" matches
// exactly one name segment, so the classic one-backtrack-point wildcard algorithm is
// exact and linear in practice.
func matchSegments(segs []string, literal []bool, name string) bool {
	pi, ni := 0, 0
	starPi, starNi := -1, 0
	for ni <= len(name) {
		if pi < len(segs) && segs[pi] == "**" {
			starPi, starNi = pi, ni
			pi++
			continue
		}
		if pi < len(segs) {
			seg, next := nextSegment(name, ni)
			var ok bool
			if literal[pi] {
				ok = segs[pi] == seg
			} else {
				ok, _ = path.Match(segs[pi], seg)
			}
			if ok {
				pi, ni = pi+1, next
				continue
			}
		}
		if starPi >= 0 {
			_, starNi = nextSegment(name, starNi)
			pi, ni = starPi+1, starNi
			continue
		}
		return false
	}
	for pi < len(segs) && segs[pi] == "**" {
		pi++
	}
	return pi == len(segs)
}

// lastSegment returns the last '/'-separated segment of name.
func lastSegment(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}

// leadingSegments returns the first k '/'-separated segments of name joined by '/', or
// false if name has fewer than k segments.
func leadingSegments(name string, k int) (string, bool) {
	if k == 0 {
		return "", true
	}
	pos := -1
	for i := 0; i < k; i++ {
		j := strings.IndexByte(name[pos+1:], '/')
		if j < 0 {
			if i == k-1 {
				return name, true
			}
			return "", false
		}
		pos += 1 + j
	}
	return name[:pos], true
}
