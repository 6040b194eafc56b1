package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// newLogf returns the daemon's logger: log/slog records ("text": key=value, "json":
// one object per line) on w, the message under msg and the component under
// component=daemon. Messages about errors and failures are logged at level WARN.
func newLogf(format string, w io.Writer) (func(string, ...any), error) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	var h slog.Handler
	switch format {
	case "text", "":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, usagef("--log-format %q: want text or json", format)
	}
	l := slog.New(h).With("component", "daemon")
	return func(f string, args ...any) {
		msg := fmt.Sprintf(f, args...)
		lower := strings.ToLower(msg)
		level := slog.LevelInfo
		if strings.Contains(lower, "error") || strings.Contains(lower, "failed") || strings.Contains(lower, "unavailable") || strings.Contains(lower, "lost") || strings.Contains(lower, "not reloaded") || strings.Contains(lower, "cannot") {
			level = slog.LevelWarn
		}
		l.Log(context.Background(), level, msg)
	}, nil
}
