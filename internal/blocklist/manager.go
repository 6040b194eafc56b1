package blocklist

import (
	"bytes"
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

// CopyDir is the directory in the state directory that holds the daemon's copy of
// each list, as a client sent it (mode 0600 files in a 0700 directory).
const CopyDir = "lists"

// Source is one list as configured: a name, the file it was read from (by the client
// that added it: the daemon reads its own copy), the action.
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
	Error  string    `json:"error,omitempty"` // why the list could not be read at start
}

// Contents is a list's name, the file its contents were read from and the contents,
// as a client sends them to update a list.
type Contents struct {
	Name string
	Path string
	Data []byte
}

// stored is a Source as lists.json keeps it: with the name of the daemon's copy in
// CopyDir ("" in a file of an older latch, which read Path itself).
type stored struct {
	Source
	Copy string `json:"copy,omitempty"`
}

type loaded struct {
	list *List
	at   time.Time
	err  string
}

// Manager keeps the lists in force in the engine, their sources in the state
// directory and a copy of each list's contents beside them. The daemon never opens a
// path a client names: a client reads the file with its own rights and sends the
// contents (the API's members are not root, and the daemon may read what they may
// not). Its methods are safe for concurrent use.
type Manager struct {
	mu    sync.Mutex
	file  string
	dir   string // CopyDir
	eng   *engine.Engine
	srcs  []stored
	lists map[string]loaded
	// onApply, if set, is told the lists with hostnames each time lists are put in
	// force (see OnApply).
	onApply func(withHosts []string)
}

// OnApply makes m call fn, now and each time it puts lists in force (a list added,
// removed or updated), with the names of the lists in force that name hostnames (in
// the order checked; none: empty). fn runs with m's lock held: it must not call m.
func (m *Manager) OnApply(fn func(withHosts []string)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.onApply = fn
	if fn != nil {
		fn(m.withHostsLocked())
	}
}

func (m *Manager) withHostsLocked() []string {
	var out []string
	for _, s := range m.srcs {
		if l := m.lists[s.Name].list; l != nil && l.Stats().Domains > 0 {
			out = append(out, s.Name)
		}
	}
	return out
}

// Open reads the lists file in stateDir and loads each list from the daemon's copy.
// A list that cannot be read or parsed now is kept (and shown with its error), not
// applied; the daemon starts. A list of an older latch's lists file has no copy: its
// file is read once (only a regular file, no symbolic link, no FIFO; an error does
// not quote the file) and copied, if nobody but root could have chosen the file
// (readOlder); any other is not applied until a client adds it again.
func Open(stateDir string, eng *engine.Engine, logf func(string, ...any)) (*Manager, error) {
	m := &Manager{file: filepath.Join(stateDir, FileName), dir: filepath.Join(stateDir, CopyDir), eng: eng, lists: map[string]loaded{}}
	data, err := readOwn(m.file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return m, nil
	case err != nil:
		return nil, fmt.Errorf("lists file %s: %w", m.file, err)
	}
	var f struct {
		Version int      `json:"version"`
		Lists   []stored `json:"lists"`
	}
	if err := json.Unmarshal(data, &f); err != nil || f.Version != 1 {
		return nil, fmt.Errorf("lists file %s: not a version 1 lists file (%v)", m.file, err)
	}
	m.srcs = slices.Clone(f.Lists)
	migrated := false
	for i, s := range m.srcs {
		var data []byte
		var err error
		if s.Copy != "" {
			data, err = m.readCopy(s.Copy)
		} else {
			data, err = readOlder(s.Path)
		}
		var l *List
		if err == nil {
			l, err = Parse(bytes.NewReader(data))
			err = withoutText(err)
		}
		if err != nil {
			logf("list %s: %v (not applied)", s.Name, err)
			m.lists[s.Name] = loaded{err: err.Error()}
			continue
		}
		m.lists[s.Name] = loaded{list: l, at: time.Now()}
		if s.Copy == "" {
			c, err := m.writeCopy(s.Name, data)
			if err != nil {
				logf("list %s: %v (in force; read from %s again at the next start)", s.Name, err, s.Path)
				continue
			}
			m.srcs[i].Copy = c
			migrated = true
		}
	}
	if migrated {
		if err := m.saveLocked(m.srcs); err != nil {
			logf("lists: %v (the lists are in force; their files are read again at the next start)", err)
			for i, s := range f.Lists {
				if s.Copy == "" && m.srcs[i].Copy != "" {
					m.removeCopy(m.srcs[i].Copy)
					m.srcs[i].Copy = ""
				}
			}
		}
	}
	m.removeStrayCopies()
	m.applyLocked()
	return m, nil
}

// removeStrayCopies removes the copies no list names (left by a crash between
// writing a copy and saving the lists file).
func (m *Manager) removeStrayCopies() {
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".list") || !e.Type().IsRegular() {
			continue
		}
		if !slices.ContainsFunc(m.srcs, func(s stored) bool { return s.Copy == e.Name() }) {
			m.removeCopy(e.Name())
		}
	}
}

// readCopy reads the daemon's copy named c.
func (m *Manager) readCopy(c string) ([]byte, error) {
	if c != filepath.Base(c) || c == "." || c == ".." || strings.ContainsAny(c, `/\`) {
		return nil, fmt.Errorf("lists file %s: copy %q: not a file name", m.file, c)
	}
	return readOwn(filepath.Join(m.dir, c))
}

// writeCopy writes data as a new copy for list name and returns the copy's name.
func (m *Manager) writeCopy(name string, data []byte) (string, error) {
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return "", fmt.Errorf("saving list %s: %w", name, err)
	}
	f, err := os.CreateTemp(m.dir, name+"-*.list") // mode 0600
	if err != nil {
		return "", fmt.Errorf("saving list %s: %w", name, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("saving list %s: %w", name, err)
	}
	return filepath.Base(f.Name()), nil
}

func (m *Manager) removeCopy(c string) {
	if c != "" {
		os.Remove(filepath.Join(m.dir, c))
	}
}

func (m *Manager) applyLocked() {
	var in []engine.BlockList
	for _, s := range m.srcs {
		if l := m.lists[s.Name].list; l != nil {
			in = append(in, engine.BlockList{Name: s.Name, Action: s.Action, List: l})
		}
	}
	m.eng.SetLists(in)
	if m.onApply != nil {
		m.onApply(m.withHostsLocked())
	}
}

func (m *Manager) saveLocked(srcs []stored) error {
	data, err := json.MarshalIndent(struct {
		Version int      `json:"version"`
		Lists   []stored `json:"lists"`
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

func checkData(name string, data []byte) error {
	if len(data) > MaxFileSize {
		return fmt.Errorf("list %s: %d bytes, larger than %d", name, len(data), MaxFileSize)
	}
	return nil
}

// Add puts the list data, read by the client from s.Path, in force as s.Name
// (replacing a list of that name) and keeps a copy of it. A bad list, name or action
// is an error (a bad line's quoted: the client sent it), and nothing changes.
func (m *Manager) Add(s Source, data []byte) error {
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
	if err := checkData(s.Name, data); err != nil {
		return err
	}
	l, err := Parse(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("list %s: %s: %w", s.Name, s.Path, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.writeCopy(s.Name, data)
	if err != nil {
		return err
	}
	var old string
	srcs := slices.DeleteFunc(slices.Clone(m.srcs), func(x stored) bool {
		if x.Name == s.Name {
			old = x.Copy
			return true
		}
		return false
	})
	srcs = append(srcs, stored{Source: s, Copy: c})
	if err := m.saveLocked(srcs); err != nil {
		m.removeCopy(c)
		return err
	}
	m.removeCopy(old)
	m.srcs = srcs
	m.lists[s.Name] = loaded{list: l, at: time.Now()}
	m.applyLocked()
	return nil
}

// Remove takes list name out of force.
func (m *Manager) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var old string
	srcs := slices.DeleteFunc(slices.Clone(m.srcs), func(x stored) bool {
		if x.Name == name {
			old = x.Copy
			return true
		}
		return false
	})
	if len(srcs) == len(m.srcs) {
		return fmt.Errorf("list %q: no such list", name)
	}
	if err := m.saveLocked(srcs); err != nil {
		return err
	}
	m.removeCopy(old)
	m.srcs = srcs
	delete(m.lists, name)
	m.applyLocked()
	return nil
}

// Update puts new contents of lists in force, as a client read them again from each
// list's file: all or nothing, if one is bad (or names no list, or another file than
// the list's, as when it was replaced meanwhile), none changes. Lists not named keep
// their contents.
func (m *Manager) Update(in []Contents) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	fresh := map[string]loaded{}
	for _, c := range in {
		i := slices.IndexFunc(m.srcs, func(s stored) bool { return s.Name == c.Name })
		if i < 0 {
			return fmt.Errorf("list %q: no such list (no list was updated)", c.Name)
		}
		if m.srcs[i].Path != c.Path {
			return fmt.Errorf("list %s: read from %s, not %s: it was added again meanwhile (no list was updated)", c.Name, m.srcs[i].Path, c.Path)
		}
		if _, dup := fresh[c.Name]; dup {
			return fmt.Errorf("list %s: given twice (no list was updated)", c.Name)
		}
		if err := checkData(c.Name, c.Data); err != nil {
			return fmt.Errorf("%w (no list was updated)", err)
		}
		l, err := Parse(bytes.NewReader(c.Data))
		if err != nil {
			return fmt.Errorf("list %s: %s: %w (no list was updated)", c.Name, c.Path, err)
		}
		fresh[c.Name] = loaded{list: l, at: time.Now()}
	}
	srcs := slices.Clone(m.srcs)
	var made []string
	undo := func() {
		for _, c := range made {
			m.removeCopy(c)
		}
	}
	for _, c := range in {
		cp, err := m.writeCopy(c.Name, c.Data)
		if err != nil {
			undo()
			return fmt.Errorf("%w (no list was updated)", err)
		}
		made = append(made, cp)
		srcs[slices.IndexFunc(srcs, func(s stored) bool { return s.Name == c.Name })].Copy = cp
	}
	if err := m.saveLocked(srcs); err != nil {
		undo()
		return fmt.Errorf("%w (no list was updated)", err)
	}
	for i, s := range m.srcs {
		if srcs[i].Copy != s.Copy {
			m.removeCopy(s.Copy)
		}
	}
	m.srcs = srcs
	for name, ld := range fresh {
		m.lists[name] = ld
	}
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
		in := Info{Source: s.Source, Loaded: ld.at, Error: ld.err}
		if ld.list != nil {
			in.Stats = ld.list.Stats()
		}
		out = append(out, in)
	}
	return out
}
