package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/latchfw/latch/internal/blocklist"
	"github.com/latchfw/latch/internal/engine"
)

// ListRequest is the body of POST /v1/lists: a list and its contents. The daemon
// reads no file a client names (a member of the API group is not root, and the
// daemon may read what the member may not): the client reads the file and sends what
// it holds.
type ListRequest struct {
	Name    string  `json:"name"`
	Path    string  `json:"path"`    // absolute path of the file the client read (shown; read again by `latch lists update`)
	Action  string  `json:"action"`  // allow, deny, reject or drop
	Content *string `json:"content"` // the file's contents (at most blocklist.MaxFileSize bytes); required, may be ""
}

// ListContents is a list's new contents in a ListsUpdate.
type ListContents struct {
	Name    string  `json:"name"`
	Path    string  `json:"path"` // the file it was read from: the list's
	Content *string `json:"content"`
}

// ListsUpdate is the body of POST /v1/lists/update: new contents of lists, read again
// from their files by the client; all or nothing.
type ListsUpdate struct {
	Lists []ListContents `json:"lists"`
}

// Request body limits for lists: a list's file may take blocklist.MaxFileSize bytes,
// more in JSON (a tab or a quote takes two bytes there); an update sends every list
// (together about twice the largest one may be).
const (
	maxListBody   = blocklist.MaxFileSize + blocklist.MaxFileSize/2
	maxUpdateBody = 2 * maxListBody
)

const noContent = `"content" missing: the daemon reads no list file a client names; send the file's contents (latch lists add does)`

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
	data, ok := readBody(w, r, maxListBody)
	if !ok {
		return
	}
	var req ListRequest
	if err := decodeStrict(data, &req); err != nil {
		writeError(w, http.StatusBadRequest, "list: "+err.Error())
		return
	}
	data = nil
	if req.Content == nil {
		writeError(w, http.StatusBadRequest, "list: "+noContent)
		return
	}
	act, err := engine.ParseAction(req.Action)
	if err != nil {
		writeError(w, http.StatusBadRequest, "list: "+err.Error())
		return
	}
	if err := m.Add(blocklist.Source{Name: req.Name, Path: req.Path, Action: act}, []byte(*req.Content)); err != nil {
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
	m := s.listsOr503(w)
	if m == nil {
		return
	}
	data, ok := readBody(w, r, maxUpdateBody)
	if !ok {
		return
	}
	var req ListsUpdate
	if err := decodeStrict(data, &req); err != nil {
		writeError(w, http.StatusBadRequest, "lists update: "+err.Error()+` (want {"lists": [{"name", "path", "content"}...]}: the daemon reads no list file; the client sends each one's contents)`)
		return
	}
	data = nil
	in := make([]blocklist.Contents, 0, len(req.Lists))
	for _, c := range req.Lists {
		if c.Content == nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("lists update: list %q: %s", c.Name, noContent))
			return
		}
		in = append(in, blocklist.Contents{Name: c.Name, Path: c.Path, Data: []byte(*c.Content)})
	}
	if err := m.Update(in); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, listsBody{m.Lists()})
}

// Lists returns the blocklists in force.
func (c *Client) Lists(ctx context.Context) ([]blocklist.Info, error) {
	var b listsBody
	err := c.do(ctx, "GET", "/v1/lists", nil, &b)
	return b.Lists, err
}

// AddList puts req.Content, read from req.Path by the caller, in force as list
// req.Name.
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

// UpdateLists puts new contents of lists in force, read again by the caller from
// each list's file (all or nothing).
func (c *Client) UpdateLists(ctx context.Context, req ListsUpdate) ([]blocklist.Info, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var b listsBody
	err = c.do(ctx, "POST", "/v1/lists/update", body, &b)
	return b.Lists, err
}
