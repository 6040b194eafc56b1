package textesc

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestString(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", ""},
		{"/usr/bin/curl", "/usr/bin/curl"},
		{"/opt/My App/bin", "/opt/My App/bin"},
		{"café ß 日本語 🙂", "café ß 日本語 🙂"},
		// Rule 1: C0 controls, DEL and invalid UTF-8 as \xNN, lower-case hex.
		{"x\x1b[2K\rfirefox\x1b[8m", `x\x1b[2K\x0dfirefox\x1b[8m`},
		{"a\nb", `a\x0ab`},
		{"tab\there", `tab\x09here`},
		{"nul\x00", `nul\x00`},
		{"del\x7f", `del\x7f`},
		{"bad\xff\xfe", `bad\xff\xfe`},
		{"cut\xe2\x80", `cut\xe2\x80`},           // a truncated 3-byte sequence: each byte
		{"\xc0\xaf", `\xc0\xaf`},                 // overlong encoding of '/'
		{"\xed\xa0\x80", `\xed\xa0\x80`},         // a UTF-16 surrogate encoded in UTF-8
		{"\xf4\x90\x80\x80", `\xf4\x90\x80\x80`}, // above U+10FFFF
		// Rule 2: other deceptive runes as \u{XXXX}, upper-case hex.
		{"\u0085", `\u{0085}`},                       // NEL, a C1 control
		{"\u009b2K", `\u{009B}2K`},                   // CSI, a C1 control
		{"evil\u202Etxt.exe", `evil\u{202E}txt.exe`}, // RIGHT-TO-LEFT OVERRIDE
		{"\u2066a\u2069", `\u{2066}a\u{2069}`},       // isolates
		{"\u200E\u200F", `\u{200E}\u{200F}`},         // LRM, RLM
		{"fire\u200Dfox", `fire\u{200D}fox`},         // ZERO WIDTH JOINER
		{"\u200B\u200C\u2060\uFEFF", `\u{200B}\u{200C}\u{2060}\u{FEFF}`},
		{"soft\u00ADhyphen", `soft\u{00AD}hyphen`},
		{"line\u2028para\u2029", `line\u{2028}para\u{2029}`}, // Zl, Zp
		{"nb\u00A0sp\u3000", `nb\u{00A0}sp\u{3000}`},         // Zs other than U+0020
		{"\u2002en", `\u{2002}en`},
		{"\uE000priv\U000F0000", `\u{E000}priv\u{F0000}`}, // private use, BMP and plane 15
		{"\U0010FFFD", `\u{10FFFD}`},                      // private use, plane 16
		{"\uFFFE\U0001FFFF", `\u{FFFE}\u{1FFFF}`},         // noncharacters (Cn)
		{"\u0378", `\u{0378}`},                            // unassigned in Greek
		{"\U000E0001tag", `\u{E0001}tag`},                 // LANGUAGE TAG (Cf)
		{"\uFFFD", "\uFFFD"},                              // the replacement character itself is a symbol
		// Rule 3: a backslash is doubled only where it could start an escape.
		{`C:\Program Files\latch\latch.exe`, `C:\Program Files\latch\latch.exe`},
		{`C:\Users\x`, `C:\Users\\x`},
		{`\u{202E}`, `\\u{202E}`},
		{`\x1b`, `\\x1b`},
		{`a\\b`, `a\\\b`},
		{`end\`, `end\`},
		{"\\\x1b", `\\\x1b`},
		{"\\\u202E", `\\\u{202E}`},
		{"\\\xff", `\\\xff`},
		{`\X \U`, `\X \U`},
	}
	for _, c := range cases {
		got := String(c.in)
		if got != c.want {
			t.Errorf("String(%q) = %q, want %q", c.in, got, c.want)
		}
		back, err := Unescape(got)
		if err != nil || back != c.in {
			t.Errorf("Unescape(%q) = %q, %v; want %q", got, back, err, c.in)
		}
	}
}

func TestStringNoAllocWhenClean(t *testing.T) {
	s := "/usr/lib/firefox/firefox-bin --new-window"
	if n := testing.AllocsPerRun(100, func() { _ = String(s) }); n != 0 {
		t.Errorf("String of clean text allocated %v times", n)
	}
}

func TestUnescapeRefusesWhatStringNeverWrites(t *testing.T) {
	for _, in := range []string{`\x1B`, `\x4`, `\x41`, `\xzz`, `\u{41}`, `\u{0041}`, `\u202E`, `\u{202e}`,
		`\u{202E`, `\u{00202E}`, `\u{110000}`, `\u{00E9}`, `\u{}`} {
		if out, err := Unescape(in); err == nil {
			t.Errorf("Unescape(%q) = %q, want an error", in, out)
		}
	}
}

// forbidden reports whether r must never reach the terminal: a control, format,
// separator (other than U+0020), private use or unassigned rune, or an invalid byte.
func forbidden(r rune) bool {
	if r == utf8.RuneError {
		return false // checked on the bytes instead
	}
	if r == ' ' {
		return false
	}
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Zs, unicode.Co) || !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z, unicode.Cc, unicode.Cf, unicode.Co, unicode.Cs)
}

// checkEscaped asserts what every output of String must hold: valid UTF-8, no
// forbidden rune, and Unescape gives back the input.
func checkEscaped(t *testing.T, in string) {
	t.Helper()
	out := String(in)
	if !utf8.ValidString(out) {
		t.Fatalf("String(%q) = %q: not valid UTF-8", in, out)
	}
	for i, r := range out {
		if forbidden(r) {
			t.Fatalf("String(%q) = %q: forbidden rune %U at %d", in, out, r, i)
		}
	}
	back, err := Unescape(out)
	if err != nil {
		t.Fatalf("Unescape(String(%q) = %q): %v", in, out, err)
	}
	if back != in {
		t.Fatalf("Unescape(String(%q)) = %q", in, back)
	}
	if String(back) != out {
		t.Fatalf("String is not stable on %q", in)
	}
	q := Quote(in)
	for i, r := range q {
		if forbidden(r) {
			t.Fatalf("Quote(%q) = %q: forbidden rune %U at %d", in, q, r, i)
		}
	}
	if back, err := Unquote(q); err != nil || back != in {
		t.Fatalf("Unquote(Quote(%q) = %q) = %q, %v", in, q, back, err)
	}
}

func TestQuote(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", `""`},
		{"/opt/My App/bin", `"/opt/My App/bin"`},
		{`say "hi"`, `"say \"hi\""`},
		{`C:\dir\`, `"C:\dir\\"`},
		{`a\"b`, `"a\\\"b"`},
		{"x\x1b[2K\rfirefox \u202E", `"x\x1b[2K\x0dfirefox \u{202E}"`},
	} {
		if got := Quote(c.in); got != c.want {
			t.Errorf("Quote(%q) = %q, want %q", c.in, got, c.want)
		}
		checkEscaped(t, c.in)
	}
}

// TestProperty draws random strings heavy in backslashes, escape letters, controls,
// deceptive runes and broken UTF-8, and checks every one.
func TestProperty(t *testing.T) {
	alphabet := []string{`\`, `\`, "x", "u", "{", "}", "1b", "A", "/", " ", "\x1b", "\n", "\r", "\x00", "\x7f",
		"\xff", "\xe2\x80", "\xc3", "é", "日", "\u0301", "\u0085", "\u202E", "\u200D", "\uFEFF", "\u00A0", "\u2028",
		"\uE000", "\U0010FFFF", "\u0378", "\uFFFD", "…"}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200_000 {
		var b strings.Builder
		for range rng.IntN(12) {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		checkEscaped(t, b.String())
	}
	// And every single rune (and every byte) alone and behind a backslash.
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if r >= 0xD800 && r <= 0xDFFF {
			continue
		}
		s := string(r)
		if Deceptive(r) != (String(s) != s) {
			t.Fatalf("%U: Deceptive %v but String gives %q", r, Deceptive(r), String(s))
		}
		checkEscaped(t, s)
		checkEscaped(t, `\`+s)
	}
	for c := range 256 {
		checkEscaped(t, string([]byte{byte(c)}))
		checkEscaped(t, string([]byte{'\\', byte(c)}))
	}
}

func TestDeceptiveMatchesTheRule(t *testing.T) {
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if r >= 0xD800 && r <= 0xDFFF {
			continue
		}
		want := r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) ||
			unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp, unicode.Co) ||
			(unicode.Is(unicode.Zs, r) && r != ' ') || !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z, unicode.Cc, unicode.Cf, unicode.Co, unicode.Cs)
		if Deceptive(r) != want {
			t.Fatalf("Deceptive(%U) = %v, want %v", r, Deceptive(r), want)
		}
	}
}

func TestShorten(t *testing.T) {
	long := "/home/mallory/" + strings.Repeat("a", 300) + "/firefox"
	got, cut := Shorten(long, 40)
	if !cut || Width(got) > 40 || !strings.HasSuffix(got, "/firefox") || !strings.HasPrefix(got, "/home/") ||
		!strings.Contains(got, Ellipsis) {
		t.Errorf("Shorten(long, 40) = %q (%d cells), %v", got, Width(got), cut)
	}
	if got, cut := Shorten("/usr/bin/curl", 40); cut || got != "/usr/bin/curl" {
		t.Errorf("Shorten of a short path = %q, %v", got, cut)
	}
	// Never inside an escape, at any width.
	esc := strings.Repeat("x\x1b[2K\rfire\u202Efox\\x\u0301日\xff", 20)
	for w := 8; w < 200; w++ {
		got, cut := Shorten(esc, w)
		if !cut {
			t.Fatalf("Shorten(esc, %d) did not cut", w)
		}
		if Width(got) > max(w, 8) {
			t.Errorf("Shorten(esc, %d) = %q: %d cells", w, got, Width(got))
		}
		head, tail, ok := strings.Cut(got, Ellipsis)
		if !ok {
			t.Fatalf("Shorten(esc, %d) = %q: no ellipsis", w, got)
		}
		for _, part := range []string{head, tail} {
			if !isWholeUnits(esc, part) {
				t.Errorf("Shorten(esc, %d) = %q: %q is not made of whole escapes", w, got, part)
			}
		}
	}
}

// isWholeUnits reports whether part is a run of consecutive units of String(s).
func isWholeUnits(s, part string) bool {
	if part == "" {
		return true
	}
	units := splitUnits(String(s))
	for i := range units {
		var b strings.Builder
		for j := i; j < len(units) && b.Len() < len(part); j++ {
			b.WriteString(units[j].s)
		}
		if b.String() == part {
			return true
		}
	}
	return false
}

func TestShortenQuoted(t *testing.T) {
	long := "/opt/My App/" + strings.Repeat("b", 100) + "/say \"hi\"\\"
	got, cut := ShortenQuoted(long, 30)
	if !cut || Width(got) > 30 || !strings.HasPrefix(got, `"/opt/My`) || !strings.HasSuffix(got, `/say \"hi\"\\"`) {
		t.Errorf("ShortenQuoted(long, 30) = %q (%d cells), %v", got, Width(got), cut)
	}
	if got, cut := ShortenQuoted("/opt/My App/x", 30); cut || got != `"/opt/My App/x"` {
		t.Errorf("ShortenQuoted of a short path = %q, %v", got, cut)
	}
}

func TestWidth(t *testing.T) {
	for _, c := range []struct {
		s string
		w int
	}{{"abc", 3}, {"日本", 4}, {"e\u0301", 1}, {`\x1b`, 4}, {"🙂", 2}, {"", 0}} {
		if got := Width(c.s); got != c.w {
			t.Errorf("Width(%q) = %d, want %d", c.s, got, c.w)
		}
	}
}

// BenchmarkString measures String on a clean ASCII path, a hostile name and a CJK path,
// each against strconv.Quote on the same input in the same run as the baseline (Go's
// own escaping, which also scans every rune).
func BenchmarkString(b *testing.B) {
	inputs := []struct{ name, s string }{
		{"clean", "/usr/lib/firefox/firefox-bin"},
		{"hostile", "x\x1b[2K\rfirefox \u202Eexe\x1b[8m"},
		{"cjk", "/home/用户/文档/项目/程序/ファイル/実行ファイル名前"},
	}
	for _, in := range inputs {
		b.Run(in.name+"/textesc", func(b *testing.B) {
			for b.Loop() {
				_ = String(in.s)
			}
		})
		b.Run(in.name+"/strconv.Quote", func(b *testing.B) {
			for b.Loop() {
				_ = strconv.Quote(in.s)
			}
		})
	}
}
