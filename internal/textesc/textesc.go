// Package textesc shows text from outside latch (paths, command lines, host names,
// user names, notes, error messages that quote them) on a terminal so that it cannot
// pretend to be something else: no control sequence reaches the terminal, no
// invisible or direction-changing character hides or reorders what is shown, and no
// line break splits one record into two.
//
// String applies one rule, the same in every text output of latch (the command line
// verbs, `latch watch`, the web UI):
//
//  1. Each byte that is not part of valid UTF-8, each ASCII C0 control (0x00-0x1F)
//     and DEL (0x7F) is shown as \xNN, two lower-case hex digits: ESC is \x1b, a
//     line feed \x0a.
//  2. Each other deceptive rune is shown as \u{XXXX}, its code point in upper-case hex
//     (at least four digits): C1 controls (U+0080-U+009F); format characters
//     (category Cf: the bidi controls U+202A-U+202E and U+2066-U+2069, U+200E and
//     U+200F, the zero-width U+200B-U+200D, U+2060, U+FEFF, the soft hyphen U+00AD,
//     ...); line and paragraph separators (Zl, Zp); space separators other than
//     U+0020 (Zs: no-break space, en space, ideographic space, ...); private use (Co);
//     unassigned code points (Cn, noncharacters included) as of the Unicode version
//     of Go's unicode package.
//  3. A backslash is doubled (\\) when the character after it is x, u, a backslash,
//     or a character that rule 1 or 2 escapes; otherwise it stays single, so Windows
//     paths stay readable (C:\Program Files\app.exe).
//  4. Everything else is shown as it is.
//
// The result is unambiguous: Unescape gives back the exact bytes. JSON output is never
// escaped this way; it keeps the text as it is (and internal/api carries bytes that
// are not UTF-8, which a JSON string cannot hold, in base64 under "raw").
//
// Around String: Quote puts a value in double quotes where it must show where it ends
// (a value with spaces among other fields), Unquote reverses it; Message shows free
// text such as an error message, leaving text that is already safe as it is; Shorten
// and ShortenQuoted cut escaped text to a screen width in the middle, never inside an
// escape, and Width counts cells. Unicode categories are those of Go's unicode package
// (Unicode 15.0.0 with Go 1.26); another implementation of the rule (the web UI) must
// use the same categories to escape the same code points.
package textesc

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// String returns s with every character the package rule escapes shown escaped.
// A string that needs no escape is returned as it is, without allocating.
func String(s string) string {
	i := firstSpecial(s)
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	b.WriteString(s[:i])
	for i < len(s) {
		i += appendNext(&b, s, i)
	}
	return b.String()
}

// Quote returns String(s) in double quotes, for text that shows where a value ends
// (a path with spaces among other fields). Inside, a double quote is shown as \"; a
// backslash is also doubled before a double quote and at the end, so the closing
// quote is never taken for an escaped one. Unquote gives back s.
func Quote(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); {
		switch {
		case s[i] == '"':
			b.WriteString(`\"`)
			i++
		case s[i] == '\\' && (i+1 == len(s) || s[i+1] == '"'):
			b.WriteString(`\\`)
			i++
		default:
			i += appendNext(&b, s, i)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// Safe reports whether s holds nothing that rule 1 or 2 escapes: valid UTF-8 with no
// control, format, separator (other than U+0020), private use or unassigned rune.
func Safe(s string) bool {
	for i := firstSpecial(s); i >= 0; {
		if s[i] != '\\' {
			return false
		}
		i++
		if j := firstSpecial(s[i:]); j >= 0 {
			i += j
		} else {
			break
		}
	}
	return true
}

// Message shows free text, such as an error or a log message that may already quote
// values with Go's %q: text that is Safe is shown as it is, backslashes included, so
// what was quoted once is not quoted twice; other text is escaped by String. Data
// fields (a path, a name in a table) always go through String.
func Message(s string) string {
	if Safe(s) {
		return s
	}
	return String(s)
}

// Strings escapes each element of ss, for callers that join them.
func Strings(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = String(s)
	}
	return out
}

// firstSpecial returns the index of the first byte that String may have to change
// (a backslash, a byte the rule escapes or the start of a rune it escapes), or -1.
func firstSpecial(s string) int {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f || c == '\\' {
				return i
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && n == 1) || Deceptive(r) {
			return i
		}
		i += n
	}
	return -1
}

// appendNext writes the escaped form of the character at s[i] and returns how many
// bytes of s it consumed.
func appendNext(b *strings.Builder, s string, i int) int {
	c := s[i]
	switch {
	case c == '\\':
		if backslashNeedsDouble(s[i+1:]) {
			b.WriteString(`\\`)
		} else {
			b.WriteByte('\\')
		}
		return 1
	case c < 0x20 || c == 0x7f:
		writeByteEscape(b, c)
		return 1
	case c < utf8.RuneSelf:
		b.WriteByte(c)
		return 1
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	switch {
	case r == utf8.RuneError && n == 1:
		writeByteEscape(b, c)
	case Deceptive(r):
		writeRuneEscape(b, r)
	default:
		b.WriteString(s[i : i+n])
	}
	return n
}

// backslashNeedsDouble reports whether a backslash followed by rest is doubled
// (rule 3).
func backslashNeedsDouble(rest string) bool {
	if rest == "" {
		return false
	}
	c := rest[0]
	if c < utf8.RuneSelf {
		return c == 'x' || c == 'u' || c == '\\' || c < 0x20 || c == 0x7f
	}
	r, n := utf8.DecodeRuneInString(rest)
	return (r == utf8.RuneError && n == 1) || Deceptive(r)
}

const hexLower = "0123456789abcdef"

func writeByteEscape(b *strings.Builder, c byte) {
	b.WriteString(`\x`)
	b.WriteByte(hexLower[c>>4])
	b.WriteByte(hexLower[c&0xf])
}

func writeRuneEscape(b *strings.Builder, r rune) {
	b.WriteString(`\u{`)
	h := strings.ToUpper(strconv.FormatInt(int64(r), 16))
	for range 4 - len(h) {
		b.WriteByte('0')
	}
	b.WriteString(h)
	b.WriteByte('}')
}

// Deceptive reports whether String shows the valid rune r as \u{XXXX} (rule 2), or as
// \xNN for r below 0x80 that is a control (rule 1). Printable ASCII is never
// deceptive.
func Deceptive(r rune) bool {
	switch {
	case r < 0x20 || r == 0x7f:
		return true
	case r < 0x80:
		return false
	case r <= 0x9f: // C1 controls
		return true
	case r > unicode.MaxRune:
		return true
	}
	// Above ASCII, the runes rule 2 leaves alone are exactly those of categories L, M,
	// N, P and S (every other category is Z, C or unassigned), which is what
	// strconv.IsPrint tests with compact tables of the same Unicode version.
	return !strconv.IsPrint(r)
}
