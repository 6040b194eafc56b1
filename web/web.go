// Package web holds the web UI's assets (HTML, CSS, JavaScript and the vendored
// Preact, htm and uPlot), embedded in the latch binary. internal/web serves them.
package web

import (
	"embed"
	"io/fs"
)

//go:embed index.html *.js *.css vendor
var files embed.FS

// Assets returns the UI's files with index.html at the root.
func Assets() fs.FS { return files }
