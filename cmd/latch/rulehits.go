package main

import (
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

// ruleHitsByID fetches every rule's hit counter from the daemon.
func ruleHitsByID(ctx context.Context) (map[engine.RuleID]engine.RuleHits, error) {
	hs, err := client().RuleHits(ctx)
	if err != nil {
		return nil, err
	}
	m := make(map[engine.RuleID]engine.RuleHits, len(hs))
	for _, h := range hs {
		m[h.ID] = h
	}
	return m, nil
}

// printRulesJSON writes one JSON object per rule: the rule as the rules file has it,
// plus "hits" (connections it decided) and "last_hit" (RFC 3339; absent if never).
func printRulesJSON(w io.Writer, rules []engine.Rule, hits map[engine.RuleID]engine.RuleHits) error {
	enc := json.NewEncoder(w)
	for _, r := range rules {
		data, err := json.Marshal(r)
		if err != nil {
			return err
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(data, &obj); err != nil {
			return err
		}
		h := hits[r.ID]
		obj["hits"], _ = json.Marshal(h.Hits)
		if !h.LastHit.IsZero() {
			obj["last_hit"], _ = json.Marshal(h.LastHit.UTC().Format(time.RFC3339Nano))
		}
		if err := enc.Encode(obj); err != nil {
			return err
		}
	}
	return nil
}

// ruleHitsSaveInterval is how often the daemon saves the rule-hit counters (and it
// saves them on a clean stop); a crash loses at most this much counting.
const ruleHitsSaveInterval = 5 * time.Minute

// keepRuleHits loads the counters saved under stateDir into eng and saves them every
// ruleHitsSaveInterval until the returned func is called, which saves them once more.
// A missing or unreadable file starts the counters at zero (and says so).
func keepRuleHits(eng *engine.Engine, stateDir string, logf func(string, ...any)) (stop func()) {
	path := filepath.Join(stateDir, store.RuleHitsFileName)
	if saved, err := store.LoadRuleHits(path); err != nil {
		logf("%v (counting from zero)", err)
	} else {
		eng.SeedRuleHits(saved)
	}
	save := func() {
		if err := store.SaveRuleHits(path, eng.RuleHits()); err != nil {
			logf("%v", err)
		}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(ruleHitsSaveInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				save()
			case <-done:
				return
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		save()
	}
}
