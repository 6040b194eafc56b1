package web

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"

	"github.com/latchfw/latch/internal/api"
)

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// writeError replies {"error": msg} like the API does.
func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", limit))
		} else {
			writeError(w, http.StatusBadRequest, "reading request body: "+err.Error())
		}
		return nil, false
	}
	return data, true
}

func decodeStrict(data []byte, v any) error { return api.DecodeStrict(data, v) }

// contentSecurityPolicy allows scripts, styles and connections from this origin only,
// plus index.html's inline import map by its hash.
func contentSecurityPolicy(assets fs.FS) (string, error) {
	index, err := fs.ReadFile(assets, "index.html")
	if err != nil {
		return "", fmt.Errorf("web assets: %w", err)
	}
	scripts := "'self'"
	const open, end = `<script type="importmap">`, `</script>`
	if i := bytes.Index(index, []byte(open)); i >= 0 {
		rest := index[i+len(open):]
		j := bytes.Index(rest, []byte(end))
		if j < 0 {
			return "", errors.New("web assets: index.html: unterminated import map")
		}
		sum := sha256.Sum256(rest[:j])
		scripts += " 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	return "default-src 'none'; script-src " + scripts + "; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
		"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'", nil
}
