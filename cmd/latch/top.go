package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/latchfw/latch/internal/api"
)

const topHelp = `Usage: latch top [--range DURATION] [--by total|rate] [-n N] [--json]

Lists the programs that moved bytes over allowed connections, busiest first: by
total over the range (default), or by current rate. One line per executable and
user: the rates received (IN/s) and sent (OUT/s) over the daemon's rate window (twice
its --traffic-interval) and the totals over the range. Bytes count IP headers; a
long-lived connection's bytes arrive every --traffic-interval and at its end.
Executables and user names are shown with control and invisible characters escaped
(\x1b, \u{202E}); --json keeps them as they are.

  --range DUR  how far back the totals go, e.g. 10m, 1h, 7d (default 1h)
  --by KEY     total or rate (default total)
  -n N         how many programs (default 20)
  --json       one JSON object per line: exe, uid, user, bytes_in, bytes_out (over
               the range), rate_in, rate_out (bytes per second)
`

func runTop(ctx context.Context, args []string) error {
	fs := newFlags("top")
	asJSON := fs.Bool("json", false, "one JSON object per line")
	rng := fs.String("range", "1h", "how far back the totals go")
	by := fs.String("by", "total", "total or rate")
	n := fs.Int("n", 20, "how many programs")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	if *n <= 0 || *n > 10_000 {
		return usagef("-n %d: want 1 to 10000", *n)
	}
	if *by != "total" && *by != "rate" {
		return usagef("--by %q: want total or rate", *by)
	}
	top, err := client().Top(ctx, *rng, *by == "rate", *n)
	if err != nil {
		return err
	}
	return printTop(os.Stdout, top, *asJSON)
}

func printTop(w io.Writer, top *api.TopBody, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		for _, p := range top.Programs {
			if err := enc.Encode(p); err != nil {
				return err
			}
		}
		return nil
	}
	if len(top.Programs) == 0 {
		fmt.Fprintf(w, "no bytes counted since %s\n", top.Since.Local().Format("2006-01-02 15:04:05"))
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "IN/s\tOUT/s\tIN\tOUT\t  \tUSER\tPROGRAM\n")
	for _, p := range top.Programs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t  \t%s\t%s\n", humanBytes(uint64(p.RateIn)), humanBytes(uint64(p.RateOut)),
			humanBytes(p.BytesIn), humanBytes(p.BytesOut), userOf(p.User, p.UID), exeOrUnknown(p.Exe))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "totals since %s; rates over the last %s\n", top.Since.Local().Format("2006-01-02 15:04:05"), top.RateWindow)
	return nil
}

// humanBytes shows n bytes in units of 1024: "512", "1.5K", "3.0M", "2.1G".
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d", n)
	}
	v, suffix := float64(n)/unit, "K"
	for _, s := range []string{"M", "G", "T", "P"} {
		if v < unit {
			break
		}
		v, suffix = v/unit, s
	}
	return fmt.Sprintf("%.1f%s", v, suffix)
}
