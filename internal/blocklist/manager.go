package blocklist

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

// FileName is the lists file in the state directory: which lists are in force.
const FileName = "lists.json"

// Source is one list as configured: a name, the file it is read from, the action.
type Source struct {
	Name   string        `json:"name"`
	Path   string        `json:"path"`
	Action engine.Action `json:"action"`
}

// Info is a list as the API shows it.
type Info struct {
	Source
	Stats  Stats     `json:"stats"`
	Loaded time.Time `json:"loaded,omitzero"`
	Error  string    `json:"error,omitempty"` // why the file could not be read at start
}

type loaded struct {
	list *List
	at   time.Time
	err  string
}

// Manager keeps the lists in force in the engine and their sources in the state
// directory. Its methods are safe for concurrent use.
type Manager struct {
	mu    sync.Mutex
	file  string
	eng   *engine.Engine
	srcs  []Source
	lists map[string]loaded
}

// Open reads the lists file in stateDir and loads each list. A list whose file
// cannot be read now is kept (and shown with its error), not applied.
func Open(stateDir string, eng *engine.Engine, logf func(string, ...any)) (*Manager, error) {
	m := &Manager{file: filepath.Join(stateDir, FileName), eng: eng, lists: map[string]loaded{}}
	data, err := os.ReadFile(m.file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return m, nil
	case err != nil:
		return nil, fmt.Errorf("lists file %s: %w", m.file, err)
	}
	var f struct {
		Version int      `json:"version"`
		Lists   []Source `json:"lists"`
	}
	if err := json.Unmarshal(data, &f); err != nil || f.Version != 1 {
		return nil, fmt.Errorf("lists file %s: not a version 1 lists file (%v)", m.file, err)
	}
	m.srcs = f.Lists
	for _, s := range m.srcs {
		l, err := load(s.Path)
		if err != nil {
			logf("list %s: %v (not applied)", s.Name, err)
			m.lists[s.Name] = loaded{err: err.Error()}
			continue
		}
		m.lists[s.Name] = loaded{list: l, at: time.Now()}
	}
	m.applyLocked()
	return m, nil
}

func load(path string) (*List, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	l, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}

func (m *Manager) applyLocked() {
	var in []engine.BlockList
	for _, s := range m.srcs {
		if l := m.lists[s.Name].list; l != nil {
			in = append(in, engine.BlockList{Name: s.Name, Action: s.Action, List: l})
		}
	}
	m.eng.SetLists(in)
}

func (m *Manager) saveLocked(srcs []Source) error {
	data, err := json.MarshalIndent(struct {
		Version int      `json:"version"`
		Lists   []Source `json:"lists"`
	}{1, srcs}, "", "  ")
	if err != nil {
		return err
	}
	tmp := m.file + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("saving lists: %w", err)
	}
	if err := os.Rename(tmp, m.file); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving lists: %w", err)
	}
	return nil
}

func validName(n string) bool {
	return n != "" && len(n) <= 64 && strings.Trim(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == ""
}

// Add reads the list at s.Path and puts it in force as s.Name (replacing a list of
// that name). A bad file, name or action is an error, and nothing changes.
func (m *Manager) Add(s Source) error {
	if !validName(s.Name) {
		return fmt.Errorf("list name %q: want 1 to 64 letters, digits, '.', '_' or '-'", s.Name)
	}
	switch s.Action {
	case engine.Allow, engine.Deny, engine.Reject, engine.Drop:
	default:
		return fmt.Errorf("list %s: action %s: want allow, deny, reject or drop", s.Name, s.Action)
	}
	if !filepath.IsAbs(s.Path) {
		return fmt.Errorf("list %s: path %q: want an absolute path", s.Name, s.Path)
	}
	l, err := load(s.Path)
	if err != nil {
		return fmt.Errorf("list %s: %w", s.Name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	srcs := slices.DeleteFunc(slices.Clone(m.srcs), func(x Source) bool { return x.Name == s.Name })
	srcs = append(srcs, s)
	if err := m.saveLocked(srcs); err != nil {
		return err
	}
	m.srcs = srcs
	m.lists[s.Name] = loaded{list: l, at: time.Now()}
	m.applyLocked()
	return nil
}

// Remove takes list name out of force.
func (m *Manager) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	srcs := slices.DeleteFunc(slices.Clone(m.srcs), func(x Source) bool { return x.Name == name })
	if len(srcs) == len(m.srcs) {
		return fmt.Errorf("list %q: no such list", name)
	}
	if err := m.saveLocked(srcs); err != nil {
		return err
	}
	m.srcs = srcs
	delete(m.lists, name)
	m.applyLocked()
	return nil
}

// Update reads every list's file again, all or nothing: if one fails, none changes.
func (m *Manager) Update() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	fresh := map[string]loaded{}
	for _, s := range m.srcs {
		l, err := load(s.Path)
		if err != nil {
			return fmt.Errorf("list %s: %w (no list was updated)", s.Name, err)
		}
		fresh[s.Name] = loaded{list: l, at: time.Now()}
	}
	m.lists = fresh
	m.applyLocked()
	return nil
}

// Lists returns the lists, in the order they are checked.
func (m *Manager) Lists() []Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Info, 0, len(m.srcs))
	for _, s := range m.srcs {
		ld := m.lists[s.Name]
		in := Info{Source: s, Loaded: ld.at, Error: ld.err}
		if ld.list != nil {
			in.Stats = ld.list.Stats()
		}
		out = append(out, in)
	}
	return out
}
