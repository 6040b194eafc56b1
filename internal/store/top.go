package store

import (
	"fmt"
	"sort"
	"time"
)

// ProgramTraffic is what one program (executable and user) moved: in total over a
// range, and at its current rate.
type ProgramTraffic struct {
	Exe      string `json:"exe"`
	UID      int32  `json:"uid"`
	User     string `json:"user"`
	BytesIn  uint64 `json:"bytes_in"`  // received over the range
	BytesOut uint64 `json:"bytes_out"` // sent over the range
	// RateIn and RateOut are bytes per second over the last rate window.
	RateIn  float64 `json:"rate_in"`
	RateOut float64 `json:"rate_out"`
}

// TopTraffic returns the programs that moved bytes since since, with their rate over the
// window before now, busiest first: by total (bytes in plus out) or, with byRate,
// by rate. Traffic reports of long-lived flows come every report interval, so a
// window shorter than it shows a flow's rate in bursts.
func (h *History) TopTraffic(since, now time.Time, window time.Duration, byRate bool) ([]ProgramTraffic, error) {
	if window <= 0 {
		return nil, fmt.Errorf("history: top: rate window %v: must be positive", window)
	}
	if !since.Before(now) {
		return nil, fmt.Errorf("history: top: range start %v is not before %v", since, now)
	}
	db := h.db.Load()
	if db == nil {
		return nil, errHistoryNotOpen
	}
	if !h.trafficTable.Load() {
		return nil, nil // no traffic reported yet
	}
	rateFrom := now.Add(-window).UnixNano()
	from := min(since.UnixNano(), rateFrom)
	rows, err := db.Query(`SELECT exe, uid, MAX(user),
		SUM(CASE WHEN time_ns >= ? THEN bytes_in ELSE 0 END),
		SUM(CASE WHEN time_ns >= ? THEN bytes_out ELSE 0 END),
		SUM(CASE WHEN time_ns >= ? THEN bytes_in ELSE 0 END),
		SUM(CASE WHEN time_ns >= ? THEN bytes_out ELSE 0 END)
		FROM traffic WHERE time_ns >= ? AND time_ns <= ? GROUP BY exe, uid`,
		since.UnixNano(), since.UnixNano(), rateFrom, rateFrom, from, now.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("history: top: %w", err)
	}
	defer rows.Close()
	var out []ProgramTraffic
	for rows.Next() {
		var p ProgramTraffic
		var uid, in, outB, rin, rout int64
		if err := rows.Scan(&p.Exe, &uid, &p.User, &in, &outB, &rin, &rout); err != nil {
			return nil, fmt.Errorf("history: top: %w", err)
		}
		if in == 0 && outB == 0 && rin == 0 && rout == 0 {
			continue
		}
		p.UID = int32(uid)
		p.BytesIn, p.BytesOut = uint64(max(in, 0)), uint64(max(outB, 0))
		p.RateIn, p.RateOut = float64(rin)/window.Seconds(), float64(rout)/window.Seconds()
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history: top: %w", err)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if byRate {
			if ra, rb := a.RateIn+a.RateOut, b.RateIn+b.RateOut; ra != rb {
				return ra > rb
			}
		}
		if ta, tb := a.BytesIn+a.BytesOut, b.BytesIn+b.BytesOut; ta != tb {
			return ta > tb
		}
		if a.Exe != b.Exe {
			return a.Exe < b.Exe
		}
		return a.UID < b.UID
	})
	return out, nil
}
