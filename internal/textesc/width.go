package textesc

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Ellipsis marks where Shorten cut text out.
const Ellipsis = "…"

// Width returns how many terminal cells t takes, for t that String returned (no
// control or format characters): combining marks take none, East Asian wide and
// fullwidth characters two, everything else one. It errs toward more cells.
func Width(t string) int {
	w := 0
	for _, r := range t {
		w += runeWidth(r)
	}
	return w
}

func runeWidth(r rune) int {
	switch {
	case r < 0x300:
		return 1
	case unicode.In(r, unicode.Mn, unicode.Me):
		return 0
	case wide(r):
		return 2
	}
	return 1
}

// wideRanges are the East Asian Wide (W) and Fullwidth (F) blocks, coarsely: a cell
// too many only shortens a line a little.
var wideRanges = [...][2]rune{
	{0x1100, 0x115F}, {0x231A, 0x231B}, {0x2329, 0x232A}, {0x23E9, 0x23F3},
	{0x25FD, 0x25FE}, {0x2614, 0x2615}, {0x2648, 0x2653}, {0x26A1, 0x26A1},
	{0x26AA, 0x26AB}, {0x26BD, 0x26C5}, {0x26CE, 0x26FD}, {0x2705, 0x2705},
	{0x270A, 0x270B}, {0x2728, 0x2728}, {0x274C, 0x2757}, {0x2795, 0x27B0},
	{0x27BF, 0x27BF}, {0x2B1B, 0x2B1C}, {0x2B50, 0x2B55}, {0x2E80, 0x303E},
	{0x3041, 0x33FF}, {0x3400, 0x4DBF}, {0x4E00, 0x9FFF}, {0xA000, 0xA4CF},
	{0xA960, 0xA97F}, {0xAC00, 0xD7A3}, {0xF900, 0xFAFF}, {0xFE10, 0xFE19},
	{0xFE30, 0xFE6F}, {0xFF00, 0xFF60}, {0xFFE0, 0xFFE6}, {0x16FE0, 0x18CFF},
	{0x1AFF0, 0x1B2FF}, {0x1F004, 0x1F004}, {0x1F0CF, 0x1F0CF}, {0x1F18E, 0x1F18E},
	{0x1F191, 0x1F19A}, {0x1F200, 0x1F2FF}, {0x1F300, 0x1F64F}, {0x1F680, 0x1F6FF},
	{0x1F7E0, 0x1F7EB}, {0x1F90C, 0x1F9FF}, {0x1FA70, 0x1FAFF}, {0x20000, 0x3FFFD},
}

func wide(r rune) bool {
	for _, rg := range wideRanges {
		if r < rg[0] {
			return false
		}
		if r <= rg[1] {
			return true
		}
	}
	return false
}

// Shorten returns String(s) if it takes at most width cells; otherwise its start and
// its end joined by Ellipsis, width cells in all, and true. It never cuts inside an
// escape (\x1b, \u{202E}, a doubled backslash) nor between a character and its
// combining marks. The end gets the larger share: for a path it holds the program's
// own name. A width below 8 counts as 8.
func Shorten(s string, width int) (string, bool) {
	return shorten(String(s), max(width, 8))
}

// ShortenQuoted is Shorten for Quote: the result is in double quotes, which count
// toward width (a width below 10 counts as 10), and the cut is inside them.
func ShortenQuoted(s string, width int) (string, bool) {
	q := Quote(s)
	t, cut := shorten(q[1:len(q)-1], max(width, 10)-2)
	return `"` + t + `"`, cut
}

// shorten cuts escaped text t to width cells, see Shorten.
func shorten(t string, width int) (string, bool) {
	if Width(t) <= width {
		return t, false
	}
	units := splitUnits(t)
	budget := width - Width(Ellipsis)
	headBudget := budget / 3
	tailBudget := budget - headBudget
	head, hw := 0, 0
	for head < len(units) && hw+units[head].w <= headBudget {
		hw += units[head].w
		head++
	}
	tail, tw := len(units), 0
	for tail > head && tw+units[tail-1].w <= tailBudget+(headBudget-hw) {
		tw += units[tail-1].w
		tail--
	}
	var b strings.Builder
	for _, u := range units[:head] {
		b.WriteString(u.s)
	}
	b.WriteString(Ellipsis)
	for _, u := range units[tail:] {
		b.WriteString(u.s)
	}
	return b.String(), true
}

type unit struct {
	s string
	w int
}

// splitUnits cuts escaped text t into pieces Shorten keeps or drops whole: an escape
// sequence, a doubled backslash, or one character with the combining marks after it.
func splitUnits(t string) []unit {
	var us []unit
	for i := 0; i < len(t); {
		n := unitLen(t[i:])
		// Combining marks stay with the character before them.
		for i+n < len(t) {
			r, m := utf8.DecodeRuneInString(t[i+n:])
			if !unicode.In(r, unicode.Mn, unicode.Me) {
				break
			}
			n += m
		}
		us = append(us, unit{t[i : i+n], Width(t[i : i+n])})
		i += n
	}
	return us
}

// unitLen is the length of the escape or character at the start of t.
func unitLen(t string) int {
	if t[0] != '\\' || len(t) == 1 {
		_, n := utf8.DecodeRuneInString(t)
		return n
	}
	switch t[1] {
	case '\\', '"':
		return 2
	case 'x':
		if len(t) >= 4 {
			return 4
		}
	case 'u':
		if end := strings.IndexByte(t, '}'); end > 0 && len(t) > 2 && t[2] == '{' {
			return end + 1
		}
	}
	return 1
}
