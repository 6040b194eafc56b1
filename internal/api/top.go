package api

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

// DefaultRateWindow is the span current rates are measured over unless
// Config.RateWindow says otherwise.
const DefaultRateWindow = 20 * time.Second

// MaxTopRange is the longest range /v1/top sums over.
const MaxTopRange = 366 * 24 * time.Hour

// TopBody is the reply of GET /v1/top.
type TopBody struct {
	Since      time.Time              `json:"since"`       // start of the range the totals cover
	Until      time.Time              `json:"until"`       // its end: when the daemon answered
	RateWindow string                 `json:"rate_window"` // the span rates are measured over
	Programs   []store.ProgramTraffic `json:"programs"`
}

// top answers GET /v1/top?range=DURATION&by=total|rate&n=N: the programs that moved
// bytes over the range, busiest first.
func (s *Server) top(w http.ResponseWriter, r *http.Request) {
	if s.cfg.History == nil {
		writeError(w, http.StatusServiceUnavailable, "connection history is off")
		return
	}
	q := r.URL.Query()
	for k := range q {
		if k != "range" && k != "by" && k != "n" {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown parameter %q: want range, by and n", k))
			return
		}
	}
	rng := time.Hour
	if v := q.Get("range"); v != "" {
		d, err := engine.ParseFor(v)
		if err != nil || d <= 0 || d > MaxTopRange {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("parameter \"range\" %q: want a duration from 1s to 366d, such as 1h or 7d", v))
			return
		}
		rng = d
	}
	byRate := false
	switch v := q.Get("by"); v {
	case "", "total":
	case "rate":
		byRate = true
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("parameter \"by\" %q: want total or rate", v))
		return
	}
	n := 20
	if v := q.Get("n"); v != "" {
		x, err := strconv.Atoi(v)
		if err != nil || x <= 0 || x > 10_000 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("parameter \"n\" %q: want a number from 1 to 10000", v))
			return
		}
		n = x
	}
	window := s.cfg.RateWindow
	if window <= 0 {
		window = DefaultRateWindow
	}
	// Reports recorded before this request are counted.
	s.cfg.History.Flush()
	now := time.Now()
	since := now.Add(-rng)
	progs, err := s.cfg.History.TopTraffic(since, now, window, byRate)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if len(progs) > n {
		progs = progs[:n]
	}
	if progs == nil {
		progs = []store.ProgramTraffic{}
	}
	writeJSON(w, http.StatusOK, TopBody{Since: since, Until: now, RateWindow: window.String(), Programs: progs})
}
