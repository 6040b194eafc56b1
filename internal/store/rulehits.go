package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/latchfw/latch/internal/engine"
)

// RuleHitsFileName is the file in the state directory that keeps the rules' hit
// counters across restarts.
const RuleHitsFileName = "rule-hits.json"

type ruleHitsFile struct {
	Version int               `json:"version"`
	Hits    []engine.RuleHits `json:"hits"`
}

// SaveRuleHits writes the hit counters to path atomically (write, fsync, rename).
func SaveRuleHits(path string, hits []engine.RuleHits) error {
	data, err := json.Marshal(ruleHitsFile{Version: 1, Hits: hits})
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("saving rule hit counters: %w", err)
	}
	return nil
}

// LoadRuleHits reads counters SaveRuleHits wrote; a missing file is no counters.
func LoadRuleHits(path string) ([]engine.RuleHits, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rule hit counters: %w", err)
	}
	var f ruleHitsFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("rule hit counters %s: %w", path, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("rule hit counters %s: version %d: want 1", path, f.Version)
	}
	return f.Hits, nil
}
