package store

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/latchfw/latch/internal/engine"
)

func TestRuleHitsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), RuleHitsFileName)
	if hs, err := LoadRuleHits(path); err != nil || hs != nil {
		t.Fatalf("missing file: %v %v", hs, err)
	}
	want := []engine.RuleHits{{ID: 1, Hits: 7, LastHit: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}, {ID: 4}}
	if err := SaveRuleHits(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := LoadRuleHits(path)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip: %+v %v, want %+v", got, err, want)
	}
	for _, bad := range []string{`{`, `{"version":2,"hits":[]}`, `{"version":1,"hits":[{"id":"x"}]}`} {
		os.WriteFile(path, []byte(bad), 0o600)
		if _, err := LoadRuleHits(path); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}
