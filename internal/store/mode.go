package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/latchfw/latch/internal/engine"
)

// File names in the state directory for the mode and learn mode's suggestions.
const (
	ModeFileName        = "mode.json"
	SuggestionsFileName = "suggestions.json"
)

// modeFile is the mode file: the mode set with `latch mode` or `latch pause`, kept so
// that a pause ends at its time even across a restart.
type modeFile struct {
	Version int              `json:"version"`
	State   engine.ModeState `json:"state"`
}

// SaveMode writes the mode state to path atomically.
func SaveMode(path string, st engine.ModeState) error {
	data, err := json.Marshal(modeFile{Version: 1, State: st})
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("saving the mode to %s: %w", path, err)
	}
	return nil
}

// LoadMode reads the mode state saved at path; ok is false when there is none.
func LoadMode(path string) (st engine.ModeState, ok bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return engine.ModeState{}, false, nil
	}
	if err != nil {
		return engine.ModeState{}, false, fmt.Errorf("mode file %s: %w", path, err)
	}
	var f modeFile
	if err := json.Unmarshal(data, &f); err != nil || f.Version != 1 {
		return engine.ModeState{}, false, fmt.Errorf("mode file %s: not a version 1 mode file (%v)", path, err)
	}
	return f.State, true, nil
}

type suggestionsFile struct {
	Version     int                 `json:"version"`
	Suggestions []engine.Suggestion `json:"suggestions"`
}

// SaveSuggestions writes learn mode's suggestions to path atomically.
func SaveSuggestions(path string, ss []engine.Suggestion) error {
	data, err := json.Marshal(suggestionsFile{Version: 1, Suggestions: ss})
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("saving suggestions to %s: %w", path, err)
	}
	return nil
}

// LoadSuggestions reads the suggestions saved at path (none if there is no file).
func LoadSuggestions(path string) ([]engine.Suggestion, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("suggestions file %s: %w", path, err)
	}
	var f suggestionsFile
	if err := json.Unmarshal(data, &f); err != nil || f.Version != 1 {
		return nil, fmt.Errorf("suggestions file %s: not a version 1 suggestions file (%v)", path, err)
	}
	return f.Suggestions, nil
}
