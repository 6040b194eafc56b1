package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/store"
)

// HistorySummary is what GET /v1/history returns: connections per step of a time range
// and the programs and hosts with the most connections in it.
type HistorySummary struct {
	From        time.Time      `json:"from"`
	To          time.Time      `json:"to"`
	Step        int64          `json:"step"` // seconds
	Buckets     []store.Bucket `json:"buckets"`
	TopPrograms []store.Count  `json:"top_programs"`
	TopHosts    []store.Count  `json:"top_hosts"`
}

// ProgramsBody is what GET /v1/programs returns.
type ProgramsBody struct {
	Programs []store.Program `json:"programs"`
}

// queryParams checks that q has no parameters but allowed ones.
func queryParams(q url.Values, allowed ...string) error {
	for k := range q {
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if !ok {
			return fmt.Errorf("unknown parameter %q: want %v", k, allowed)
		}
	}
	return nil
}

// intParam parses parameter name of q as an integer in [lo, hi]; def if absent.
func intParam(q url.Values, name string, lo, hi, def int64) (int64, error) {
	v := q.Get(name)
	if v == "" {
		return def, nil
	}
	x, err := strconv.ParseInt(v, 10, 64)
	if err != nil || x < lo || x > hi {
		return 0, fmt.Errorf("parameter %q %q: want a number from %d to %d", name, v, lo, hi)
	}
	return x, nil
}

// history serves GET /v1/history?from=UNIX&to=UNIX&step=SECONDS&top=N (defaults: the
// last hour, by the minute, top 10).
func (s *Server) history(w http.ResponseWriter, r *http.Request) {
	if s.cfg.History == nil {
		writeError(w, http.StatusServiceUnavailable, "connection history is off")
		return
	}
	q := r.URL.Query()
	if err := queryParams(q, "from", "to", "step", "top"); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	now := time.Now().Unix()
	const maxUnix = 9_000_000_000 // 2255: times are kept as int64 nanoseconds
	to, err := intParam(q, "to", 1, maxUnix, now+1)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	from, err := intParam(q, "from", 0, to-1, max(0, to-3600))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	step, err := intParam(q, "step", 1, 366*86400, 60)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	top, err := intParam(q, "top", 1, 1000, 10)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	// Buckets start on a multiple of the step, so a chart's minutes are clock minutes.
	from -= from % step
	sum := HistorySummary{From: time.Unix(from, 0).UTC(), To: time.Unix(to, 0).UTC(), Step: step}
	s.cfg.History.Flush()
	if sum.Buckets, err = s.cfg.History.Timeline(sum.From, sum.To, time.Duration(step)*time.Second); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if sum.TopPrograms, err = s.cfg.History.Top("exe", sum.From, sum.To, int(top)); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if sum.TopHosts, err = s.cfg.History.Top("host", sum.From, sum.To, int(top)); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, sum)
}

// PrecedenceBody is what GET /v1/rules/precedence returns: rule IDs, the rule that
// wins when several match first.
type PrecedenceBody struct {
	Order []engine.RuleID `json:"order"`
}

func (s *Server) rulePrecedence(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, PrecedenceBody{engine.Precedence(s.cfg.Engine.Rules())})
}

// programs serves GET /v1/programs: every program in the history with its counts.
func (s *Server) programs(w http.ResponseWriter, r *http.Request) {
	if s.cfg.History == nil {
		writeError(w, http.StatusServiceUnavailable, "connection history is off")
		return
	}
	if err := queryParams(r.URL.Query()); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.cfg.History.Flush()
	ps, err := s.cfg.History.Programs()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, ProgramsBody{ps})
}

// programConns serves GET /v1/programs/conns?exe=PATH&n=N: a program's newest
// connections, oldest first.
func (s *Server) programConns(w http.ResponseWriter, r *http.Request) {
	if s.cfg.History == nil {
		writeError(w, http.StatusServiceUnavailable, "connection history is off")
		return
	}
	q := r.URL.Query()
	if err := queryParams(q, "exe", "n"); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if _, ok := q["exe"]; !ok {
		writeError(w, http.StatusBadRequest, `parameter "exe" is required: the program's path`)
		return
	}
	n, err := intParam(q, "n", 1, 100_000, 100)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.cfg.History.Flush()
	cs, err := s.cfg.History.ProgramConns(q.Get("exe"), int(n))
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := make([]Conn, len(cs))
	for i := range cs {
		out[i] = ConnView(&cs[i])
	}
	writeJSON(w, http.StatusOK, connsBody{out})
}
