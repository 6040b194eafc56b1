package textesc

import "testing"

// FuzzString checks that String never emits a control, format, separator, private use
// or unassigned rune or invalid UTF-8, that Unescape gives back the exact input, and
// that Shorten stays within its width. Seeds: testdata/fuzz/FuzzString.
func FuzzString(f *testing.F) {
	for _, s := range []string{"", "/usr/bin/curl", "x\x1b[2K\rfirefox\x1b[8m", "a\nb\r\n", "\\x1b", `C:\Users\x`,
		"\u202Egnp.exe", "fire\u200Dfox", "\xff\xfe\xc3", "\\\u202E", "\u2028\u00A0\uE000\u0378"} {
		f.Add(s, 40)
	}
	f.Fuzz(func(t *testing.T, s string, width int) {
		checkEscaped(t, s)
		width = width % 200
		got, _ := Shorten(s, width)
		if Width(got) > max(width, 8) {
			t.Fatalf("Shorten(%q, %d) = %q: %d cells", s, width, got, Width(got))
		}
		for _, r := range got {
			if forbidden(r) {
				t.Fatalf("Shorten(%q, %d) = %q: forbidden rune %U", s, width, got, r)
			}
		}
		q, cut := ShortenQuoted(s, width)
		if Width(q) > max(width, 10) || len(q) < 2 || q[0] != '"' || q[len(q)-1] != '"' {
			t.Fatalf("ShortenQuoted(%q, %d) = %q: %d cells", s, width, q, Width(q))
		}
		for _, r := range q {
			if forbidden(r) {
				t.Fatalf("ShortenQuoted(%q, %d) = %q: forbidden rune %U", s, width, q, r)
			}
		}
		if back, err := Unquote(q); !cut && (err != nil || back != s) {
			t.Fatalf("ShortenQuoted(%q, %d) = %q, not cut, unquotes to %q, %v", s, width, q, back, err)
		}
	})
}
