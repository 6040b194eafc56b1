package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"

	"github.com/latchfw/latch/internal/blocklist"
	"github.com/latchfw/latch/internal/engine"
)

// ListRequest is the body of POST /v1/lists.
type ListRequest struct {
	Name   string `json:"name"`
	Path   string `json:"path"`   // absolute path of the list file, read by the daemon
	Action string `json:"action"` // allow, deny, reject or drop
}

type listsBody struct {
	Lists []blocklist.Info `json:"lists"`
}

func (s *Server) listsOr503(w http.ResponseWriter) *blocklist.Manager {
	if s.cfg.Lists == nil {
		writeError(w, http.StatusServiceUnavailable, "lists are not served by this daemon")
	}
	return s.cfg.Lists
}

func (s *Server) getLists(w http.ResponseWriter, r *http.Request) {
	if m := s.listsOr503(w); m != nil {
		writeJSON(w, http.StatusOK, listsBody{m.Lists()})
	}
}

func (s *Server) addList(w http.ResponseWriter, r *http.Request) {
	m := s.listsOr503(w)
	if m == nil {
		return
	}
	data, ok := readBody(w, r, maxBody)
	if !ok {
		return
	}
	var req ListRequest
	if err := decodeStrict(data, &req); err != nil {
		writeError(w, http.StatusBadRequest, "list: "+err.Error())
		return
	}
	act, err := engine.ParseAction(req.Action)
	if err != nil {
		writeError(w, http.StatusBadRequest, "list: "+err.Error())
		return
	}
	if err := m.Add(blocklist.Source{Name: req.Name, Path: req.Path, Action: act}); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, listsBody{m.Lists()})
}

func (s *Server) removeList(w http.ResponseWriter, r *http.Request) {
	if m := s.listsOr503(w); m != nil {
		if err := m.Remove(r.PathValue("name")); err != nil {
			writeError(w, http.StatusNotFound, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, listsBody{m.Lists()})
	}
}

func (s *Server) updateLists(w http.ResponseWriter, r *http.Request) {
	if m := s.listsOr503(w); m != nil {
		if err := m.Update(); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, listsBody{m.Lists()})
	}
}

// Lists returns the blocklists in force.
func (c *Client) Lists(ctx context.Context) ([]blocklist.Info, error) {
	var b listsBody
	err := c.do(ctx, "GET", "/v1/lists", nil, &b)
	return b.Lists, err
}

// AddList loads the list file at req.Path (read by the daemon) as req.Name.
func (c *Client) AddList(ctx context.Context, req ListRequest) ([]blocklist.Info, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var b listsBody
	err = c.do(ctx, "POST", "/v1/lists", body, &b)
	return b.Lists, err
}

// RemoveList takes list name out of force.
func (c *Client) RemoveList(ctx context.Context, name string) ([]blocklist.Info, error) {
	var b listsBody
	err := c.do(ctx, "DELETE", "/v1/lists/"+url.PathEscape(name), nil, &b)
	return b.Lists, err
}

// UpdateLists reads every list file again (all or nothing).
func (c *Client) UpdateLists(ctx context.Context) ([]blocklist.Info, error) {
	var b listsBody
	err := c.do(ctx, "POST", "/v1/lists/update", nil, &b)
	return b.Lists, err
}
