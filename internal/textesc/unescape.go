package textesc

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Unescape returns the exact bytes String escaped: Unescape(String(s)) == s for every
// s. It reads \xNN (two lower-case hex digits) as a byte, \u{XXXX} (upper-case hex)
// as a rune, \\ as one backslash, and a backslash before any other character (or at
// the end) as itself. It fails on an escape String never writes (\x1B, \u{41}, a \x
// or \u without its digits), naming the offset.
func Unescape(t string) (string, error) {
	i := strings.IndexByte(t, '\\')
	if i < 0 {
		return t, nil
	}
	var b strings.Builder
	b.Grow(len(t))
	b.WriteString(t[:i])
	for i < len(t) {
		c := t[i]
		if c != '\\' {
			b.WriteByte(c)
			i++
			continue
		}
		if i+1 == len(t) {
			b.WriteByte('\\')
			i++
			continue
		}
		switch t[i+1] {
		case '\\':
			b.WriteByte('\\')
			i += 2
		case 'x':
			if i+4 > len(t) || !isHex(t[i+2], hexLower) || !isHex(t[i+3], hexLower) {
				return "", fmt.Errorf("textesc: offset %d: \\x wants two lower-case hex digits", i)
			}
			n, _ := strconv.ParseUint(t[i+2:i+4], 16, 8)
			c := byte(n)
			if c >= 0x20 && c < 0x7f {
				return "", fmt.Errorf("textesc: offset %d: \\x%s is printable ASCII, never escaped", i, t[i+2:i+4])
			}
			b.WriteByte(c)
			i += 4
		case 'u':
			end := strings.IndexByte(t[i:], '}')
			if i+3 > len(t) || t[i+2] != '{' || end < 0 {
				return "", fmt.Errorf("textesc: offset %d: \\u wants {XXXX}", i)
			}
			digits := t[i+3 : i+end]
			if len(digits) < 4 || len(digits) > 6 || (len(digits) > 4 && digits[0] == '0') {
				return "", fmt.Errorf("textesc: offset %d: \\u{%s}: want 4 to 6 hex digits, no extra leading zero", i, digits)
			}
			for j := range len(digits) {
				if !isHex(digits[j], "0123456789ABCDEF") {
					return "", fmt.Errorf("textesc: offset %d: \\u{%s}: want upper-case hex digits", i, digits)
				}
			}
			n, _ := strconv.ParseUint(digits, 16, 32)
			r := rune(n)
			if r < 0x80 || !utf8.ValidRune(r) || !Deceptive(r) {
				return "", fmt.Errorf("textesc: offset %d: \\u{%s} is never escaped", i, digits)
			}
			b.WriteRune(r)
			i += end + 1
		default:
			b.WriteByte('\\')
			i++
		}
	}
	return b.String(), nil
}

// Unquote reverses Quote: t must be in double quotes, and inside it \" is a double
// quote, \\ a backslash, and the rest reads as in Unescape.
func Unquote(t string) (string, error) {
	if len(t) < 2 || t[0] != '"' || t[len(t)-1] != '"' {
		return "", fmt.Errorf("textesc: %q is not in double quotes", t)
	}
	inner := t[1 : len(t)-1]
	var b strings.Builder
	for i := 0; i < len(inner); {
		c := inner[i]
		switch {
		case c == '"':
			return "", fmt.Errorf("textesc: offset %d: a double quote not escaped", i+1)
		case c == '\\' && i+1 < len(inner) && inner[i+1] == '"':
			b.WriteByte('"')
			i += 2
		case c == '\\' && i+1 < len(inner) && inner[i+1] == '\\':
			b.WriteString(`\\`)
			i += 2
		case c == '\\' && i+1 == len(inner):
			return "", fmt.Errorf("textesc: a single backslash before the closing quote")
		default:
			b.WriteByte(c)
			i++
		}
	}
	// What is left is Unescape's form, with \" resolved.
	return Unescape(b.String())
}

func isHex(c byte, digits string) bool { return strings.IndexByte(digits, c) >= 0 }
