//go:build unix

package blocklist

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// TestOnApply: the hook hears, at once and on each change, which lists in force
// name hostnames (not those with addresses only).
func TestOnApply(t *testing.T) {
	m, _ := openManager(t, t.TempDir())
	var got [][]string
	m.OnApply(func(w []string) { got = append(got, w) })
	src := filepath.Join(t.TempDir(), "l")
	if err := m.Add(Source{Name: "addrs", Path: src, Action: engine.Deny}, []byte("198.18.0.0/15\n")); err != nil {
		t.Fatal(err)
	}
	if err := m.Add(Source{Name: "ads", Path: src, Action: engine.Deny}, []byte("ads.example\n")); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove("ads"); err != nil {
		t.Fatal(err)
	}
	want := [][]string{nil, nil, {"ads"}, nil}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("OnApply heard %q, want %q", got, want)
	}
}
