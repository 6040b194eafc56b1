// Package config reads latch's configuration file: TOML whose top-level keys are the
// names of a command's flags, e.g.
//
//	prompt-timeout = "30s"
//	inbound = true
//	queue = 4242
//
// It works over any flag.FlagSet, so every flag a command defines can be set from the
// file without this package knowing it. Flags given on the command line win over the
// file. Unknown keys, tables, and values of the wrong type are errors that name the
// file, the line and the key; a file with any error sets nothing.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/latchfw/latch/internal/fileperm"
	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// DefaultPath is where the daemon reads its configuration when --config is not given.
const DefaultPath = "/etc/latch/latch.toml"

// Error is a problem at one place of a configuration file.
type Error struct {
	File string
	Line int    // 1-based; 0 when unknown
	Key  string // the key at fault; empty for a syntax error
	Err  error
}

func (e *Error) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s:%d: key %q: %v", e.File, e.Line, e.Key, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Sources records which flags a configuration file set, and on which line.
type Sources struct {
	File  string
	Lines map[string]int // flag name -> line
}

// Line returns the line of the file that set flag name, or 0 if the file did not.
func (s *Sources) Line(name string) int {
	if s == nil {
		return 0
	}
	return s.Lines[name]
}

// ApplyFile reads the file at path and sets the flags of fs it names, except those in
// set (the flags given on the command line, which win). A missing file is an error
// wrapping fs.ErrNotExist; callers decide whether that matters.
//
// The file, and every directory above it, must be changeable by root (or the user
// running latch) only: see fileperm.CheckTrusted and fileperm.CheckParents.
func ApplyFile(fs *flag.FlagSet, path string, set map[string]bool, reserved ...string) (*Sources, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	if err := fileperm.CheckFileInfo(path, st); err != nil {
		return nil, fmt.Errorf("config file %w", err)
	}
	if err := fileperm.CheckParents(path); err != nil {
		return nil, fmt.Errorf("config file %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("config file %s: larger than %d bytes", path, maxFileSize)
	}
	return Apply(fs, path, data, set, reserved...)
}

// maxFileSize bounds the configuration file: a page of flags is a few kilobytes.
const maxFileSize = 1 << 20

// Apply is ApplyFile over the file's contents; name is used in errors. Keys in
// reserved are flags of fs that the file must not set (such as --config itself). On
// any error no flag is changed.
func Apply(fs *flag.FlagSet, name string, data []byte, set map[string]bool, reserved ...string) (*Sources, error) {
	vals, lines, err := parse(name, data)
	if err != nil {
		return nil, err
	}
	// Keys in the order of the file, so the first bad one is reported.
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if lines[keys[i]] != lines[keys[j]] {
			return lines[keys[i]] < lines[keys[j]]
		}
		return keys[i] < keys[j]
	})
	type change struct {
		f   *flag.Flag
		val string
	}
	var changes []change
	for _, k := range keys {
		bad := func(format string, args ...any) error {
			return &Error{File: name, Line: lines[k], Key: k, Err: fmt.Errorf(format, args...)}
		}
		f := fs.Lookup(k)
		for _, r := range reserved {
			if k == r {
				return nil, bad("cannot be set in the configuration file")
			}
		}
		if f == nil {
			return nil, bad("unknown key (not a flag of latch %s)", fs.Name())
		}
		s, err := flagText(f, vals[k])
		if err != nil {
			return nil, bad("%v", err)
		}
		if !set[k] {
			changes = append(changes, change{f, s})
		}
	}
	// Set everything, or on the first failure put back what was set.
	old := make([]string, 0, len(changes))
	for i, c := range changes {
		old = append(old, c.f.Value.String())
		if err := fs.Set(c.f.Name, c.val); err != nil {
			for j := i; j >= 0; j-- { // the failed Set may have changed its value too
				changes[j].f.Value.Set(old[j])
			}
			return nil, &Error{File: name, Line: lines[c.f.Name], Key: c.f.Name, Err: unwrapSet(c.val, err)}
		}
	}
	src := &Sources{File: name, Lines: map[string]int{}}
	for _, c := range changes {
		src.Lines[c.f.Name] = lines[c.f.Name]
	}
	return src, nil
}

// unwrapSet drops flag's "invalid value ... for flag -x: " wrapping: the error already
// names the key.
func unwrapSet(val string, err error) error {
	if u := errors.Unwrap(err); u != nil {
		err = u
	}
	return fmt.Errorf("invalid value %q: %w", val, err)
}

// parse decodes data, and finds the line of each top-level key. Tables, dotted keys
// and arrays are errors: every flag is a top-level scalar.
func parse(name string, data []byte) (map[string]any, map[string]int, error) {
	var vals map[string]any
	if err := toml.Unmarshal(data, &vals); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, _ := de.Position()
			e := &Error{File: name, Line: row, Err: errors.New(de.Error())}
			if k := de.Key(); len(k) > 0 {
				e.Key = k[0]
			}
			return nil, nil, e
		}
		return nil, nil, &Error{File: name, Err: err}
	}
	lines := map[string]int{}
	var p unstable.Parser
	p.Reset(data)
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.KeyValue, unstable.Table, unstable.ArrayTable:
		default:
			continue
		}
		it := e.Key()
		if !it.Next() {
			continue
		}
		k := it.Node()
		key, line := string(k.Data), p.Shape(k.Raw).Start.Line
		if e.Kind != unstable.KeyValue {
			return nil, nil, &Error{File: name, Line: line, Key: key, Err: errors.New("tables are not allowed: every key is a flag name at the top of the file")}
		}
		if it.Next() {
			return nil, nil, &Error{File: name, Line: line, Key: key, Err: errors.New("dotted keys are not allowed: every key is a flag name")}
		}
		if _, seen := lines[key]; !seen {
			lines[key] = line
		}
	}
	if err := p.Error(); err != nil {
		// Unmarshal accepted the document; the parser agreeing is expected.
		return nil, nil, &Error{File: name, Err: err}
	}
	for k := range vals {
		if _, ok := lines[k]; !ok {
			lines[k] = 0
		}
	}
	return vals, lines, nil
}

// flagText turns a TOML value into the text flag.Value.Set takes, checking that its
// TOML type fits the flag: a boolean for a boolean flag, a number for a numeric flag,
// a string for everything else (durations included: "30s").
func flagText(f *flag.Flag, v any) (string, error) {
	var want string
	if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
		want = "boolean"
	} else if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case int, int64, uint, uint64:
			want = "integer"
		case float64:
			want = "number"
		default: // string, time.Duration, custom values
			want = "string"
		}
	} else {
		want = "string"
	}
	switch x := v.(type) {
	case bool:
		if want == "boolean" {
			return strconv.FormatBool(x), nil
		}
	case int64:
		if want == "integer" || want == "number" {
			return strconv.FormatInt(x, 10), nil
		}
	case float64:
		if want == "number" && !math.IsNaN(x) && !math.IsInf(x, 0) {
			return strconv.FormatFloat(x, 'g', -1, 64), nil
		}
	case string:
		if want == "string" {
			return x, nil
		}
	}
	return "", fmt.Errorf("want a %s, got %s", want, tomlType(v))
}

func tomlType(v any) string {
	switch v.(type) {
	case bool:
		return "a boolean"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	case time.Time, toml.LocalDate, toml.LocalDateTime, toml.LocalTime:
		return "a date/time"
	}
	return fmt.Sprintf("%T", v)
}
