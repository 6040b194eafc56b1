package store

import (
	"errors"
	"fmt"
)

// ErrNoConn is returned by Get for an ID the history does not hold (never written, or
// pruned).
var ErrNoConn = errors.New("no such connection in the history")

// Get returns the connection with the given ID, flushing pending writes first.
func (h *History) Get(id int64) (Conn, error) {
	if id <= 0 {
		return Conn{}, fmt.Errorf("history: connection id %d: want a positive number", id)
	}
	h.Flush()
	db := h.db.Load()
	if db == nil {
		return Conn{}, errHistoryNotOpen
	}
	rows, err := h.query(db, `SELECT `+connCols+` FROM conns_view WHERE id = ?`, id)
	if err != nil {
		return Conn{}, fmt.Errorf("history: %w", err)
	}
	cs, err := scanConns(rows)
	if err != nil {
		return Conn{}, err
	}
	if len(cs) == 0 || cs[0].ID != id {
		return Conn{}, fmt.Errorf("history: connection %d: %w (pruned, or never recorded)", id, ErrNoConn)
	}
	return cs[0], nil
}
