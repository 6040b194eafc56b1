package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/strictjson"
)

// ModeRequest is the body of POST /v1/mode.
type ModeRequest struct {
	Mode string `json:"mode"`          // ask, learn, silent-allow, silent-deny or block-all (required)
	For  string `json:"for,omitempty"` // a duration (90m, 7d): the mode then ends by itself and the mode before it returns
}

// SuggestionsAccept is the body of POST /v1/suggestions/accept: IDs, or all.
type SuggestionsAccept struct {
	IDs []engine.SuggestionID `json:"ids,omitempty"`
	All bool                  `json:"all,omitempty"`
}

type suggestionsBody struct {
	Suggestions []engine.Suggestion    `json:"suggestions"`
	Stats       engine.SuggestionStats `json:"stats"`
}

func (s *Server) getMode(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.cfg.Engine.ModeState())
}

// parseModeRequest decodes a POST /v1/mode body strictly.
func parseModeRequest(data []byte, now time.Time, current engine.ModeState) (engine.ModeState, error) {
	members, err := strictjson.Object(data, "mode", "for")
	if err != nil {
		return engine.ModeState{}, err
	}
	raw, ok := members["mode"]
	if !ok {
		return engine.ModeState{}, fmt.Errorf(`field "mode": required: ask, learn, silent-allow, silent-deny or block-all`)
	}
	text, err := strictjson.String(raw)
	if err != nil {
		return engine.ModeState{}, fmt.Errorf(`field "mode" (%s): %v`, strictjson.Describe(raw), err)
	}
	m, err := engine.ParseMode(text)
	if err != nil {
		return engine.ModeState{}, fmt.Errorf(`field "mode": %v`, err)
	}
	st := engine.ModeState{Mode: m}
	if raw, ok := members["for"]; ok {
		text, err := strictjson.String(raw)
		if err != nil {
			return engine.ModeState{}, fmt.Errorf(`field "for" (%s): %v`, strictjson.Describe(raw), err)
		}
		d, err := engine.ParseFor(text)
		if err != nil || d <= 0 {
			return engine.ModeState{}, fmt.Errorf(`field "for" (%q): want a duration such as 10m or 7d`, text)
		}
		// The mode that returns is the one in force before any timed mode.
		then := current.Mode
		if !current.Until.IsZero() {
			then = current.Then
		}
		st.Until, st.Then = now.Add(d).Round(0), then // a wall-clock time: no monotonic reading (review29)
	}
	return st, nil
}

func (s *Server) setMode(w http.ResponseWriter, r *http.Request) {
	data, ok := readBody(w, r, maxBody)
	if !ok {
		return
	}
	st, err := parseModeRequest(data, time.Now(), s.cfg.Engine.ModeState())
	if err != nil {
		writeError(w, http.StatusBadRequest, "mode: "+err.Error())
		return
	}
	if err := s.cfg.Engine.SetMode(st); err != nil {
		writeError(w, http.StatusBadRequest, "mode: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, s.cfg.Engine.ModeState())
}

func (s *Server) listSuggestions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, suggestionsBody{s.cfg.Engine.Suggestions(), s.cfg.Engine.SuggestionStats()})
}

func (s *Server) acceptSuggestions(w http.ResponseWriter, r *http.Request) {
	data, ok := readBody(w, r, maxBody)
	if !ok {
		return
	}
	var req SuggestionsAccept
	if err := decodeStrict(data, &req); err != nil {
		writeError(w, http.StatusBadRequest, "suggestions: "+err.Error())
		return
	}
	if req.All == (len(req.IDs) > 0) {
		writeError(w, http.StatusBadRequest, `suggestions: give "ids" or "all": true, not both or neither`)
		return
	}
	var added []engine.Rule
	if !s.changeRules(w, func() (int, error) {
		var err error
		added, err = s.cfg.Engine.AcceptSuggestions(req.IDs, req.All)
		if err != nil {
			return http.StatusNotFound, err
		}
		return 0, nil
	}) {
		return
	}
	if added == nil {
		added = []engine.Rule{}
	}
	writeJSON(w, http.StatusOK, rulesBody{added})
}

// Mode returns the daemon's mode.
func (c *Client) Mode(ctx context.Context) (engine.ModeState, error) {
	var st engine.ModeState
	err := c.do(ctx, "GET", "/v1/mode", nil, &st)
	return st, err
}

// SetMode puts a mode in force (for a time, if req.For is set) and returns the new
// state. When it returns, the daemon decides the next connection in that mode.
func (c *Client) SetMode(ctx context.Context, req ModeRequest) (engine.ModeState, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return engine.ModeState{}, err
	}
	var st engine.ModeState
	err = c.do(ctx, "POST", "/v1/mode", body, &st)
	return st, err
}

// Suggestions returns learn mode's suggestions, grouped by program, and its counters.
func (c *Client) Suggestions(ctx context.Context) ([]engine.Suggestion, engine.SuggestionStats, error) {
	var b suggestionsBody
	err := c.do(ctx, "GET", "/v1/suggestions", nil, &b)
	return b.Suggestions, b.Stats, err
}

// AcceptSuggestions turns suggestions into rules (all of them if all) and returns the
// rules added.
func (c *Client) AcceptSuggestions(ctx context.Context, ids []engine.SuggestionID, all bool) ([]engine.Rule, error) {
	body, err := json.Marshal(SuggestionsAccept{IDs: ids, All: all})
	if err != nil {
		return nil, err
	}
	var b rulesBody
	err = c.do(ctx, "POST", "/v1/suggestions/accept", body, &b)
	return b.Rules, err
}

// ParseSuggestionID parses a suggestion ID from the command line.
func ParseSuggestionID(s string) (engine.SuggestionID, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("suggestion id %q: want a positive number", s)
	}
	return engine.SuggestionID(n), nil
}
