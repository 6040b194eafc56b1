// Package managed loads managed rule files: *.json files in a directory (by default
// /etc/latch/rules.d), in the format of `latch rules export`, that configuration
// management pushes. Their rules are in force beside the user's own rules but read-only
// (engine.Rule.Source names the file). A set is loaded all or nothing: an error names
// the file and line, and the caller keeps the set it had.
package managed

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/fileperm"
)

// MaxFileSize bounds one rule file.
const MaxFileSize = 64 << 20

// Error is a problem in one managed rule file.
type Error struct {
	File string
	Line int // 0: the file as a whole
	Err  error
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %v", e.File, e.Err)
	}
	return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Load reads every *.json file of dir, in name order, and returns their rules with
// Source set to the file's path and no ID (the engine gives them one). A missing
// directory is an empty set. Other files (editor backups, *.json~, dotfiles) are
// ignored.
//
// Every directory above dir must be root's too (fileperm.CheckParents), even when dir
// is missing: whoever may change one could rename dir away, taking the managed rules
// with it, or put another directory in its place.
func Load(dir string) ([]engine.Rule, error) {
	if err := fileperm.CheckParents(dir); err != nil {
		return nil, fmt.Errorf("managed rules: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("managed rules: %w", err)
	}
	// Whoever may add a file here may add rules.
	if err := fileperm.CheckTrusted(dir); err != nil {
		return nil, fmt.Errorf("managed rules: %w", err)
	}
	var names []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") || !strings.HasSuffix(n, ".json") || e.IsDir() {
			continue
		}
		// The name is shown as each rule's source: no control characters or
		// invalid UTF-8 that could play tricks on a terminal.
		if !utf8.ValidString(n) || strings.IndexFunc(n, func(r rune) bool { return r < 0x20 || (r >= 0x7f && r < 0xa0) || unicode.Is(unicode.Cf, r) }) >= 0 {
			return nil, fmt.Errorf("managed rules: file name %q in %s: control or format characters; rename it", n, dir)
		}
		names = append(names, n)
	}
	sort.Strings(names)
	var all []engine.Rule
	for _, n := range names {
		path := filepath.Join(dir, n)
		rules, err := LoadFile(path)
		if err != nil {
			return nil, err
		}
		all = append(all, rules...)
	}
	return all, nil
}

// LoadFile reads one managed rule file.
func LoadFile(path string) ([]engine.Rule, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{File: path, Err: err}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, &Error{File: path, Err: err}
	}
	if !st.Mode().IsRegular() {
		return nil, &Error{File: path, Err: errors.New("not a regular file")}
	}
	if err := fileperm.CheckFileInfo(path, st); err != nil {
		return nil, err
	}
	if st.Size() > MaxFileSize {
		return nil, &Error{File: path, Err: fmt.Errorf("%d bytes: larger than %d", st.Size(), MaxFileSize)}
	}
	data := make([]byte, st.Size())
	if _, err := f.ReadAt(data, 0); err != nil && st.Size() > 0 {
		return nil, &Error{File: path, Err: err}
	}
	return Parse(path, data)
}

// Parse parses data, the contents of the managed rule file name.
func Parse(name string, data []byte) ([]engine.Rule, error) {
	rules, err := engine.ParseRules(data)
	if err != nil {
		e := &Error{File: name, Err: err}
		var re *engine.RuleError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &re):
			e.Line = ruleLine(data, re.Index)
		case errors.As(err, &se):
			e.Line = lineAt(data, int(se.Offset))
		default:
			e.Line = 1
		}
		return nil, e
	}
	for i := range rules {
		rules[i].ID = 0
		rules[i].Source = name
	}
	return rules, nil
}

// ruleLine returns the line where rule index of the file's "rules" array starts, or
// 1 if it cannot be found.
func ruleLine(data []byte, index int) int {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return 1
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return 1
		}
		if k != "rules" {
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return 1
			}
			continue
		}
		if t, err := dec.Token(); err != nil || t != json.Delim('[') {
			return 1
		}
		for i := 0; dec.More(); i++ {
			off := int(dec.InputOffset())
			var raw json.RawMessage
			if dec.Decode(&raw) != nil {
				return 1
			}
			if i == index {
				// The offset is just past the comma or bracket before the rule.
				for off < len(data) && (data[off] == ',' || data[off] == ' ' || data[off] == '\t' || data[off] == '\n' || data[off] == '\r') {
					off++
				}
				return lineAt(data, off)
			}
		}
		return 1
	}
	return 1
}

func lineAt(data []byte, off int) int {
	return 1 + bytes.Count(data[:min(max(off, 0), len(data))], []byte{'\n'})
}
