package textesc

import (
	"encoding/hex"
	"encoding/json"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"unicode"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json")

// vector is one case of testdata/vectors.json: the input's bytes in hex (it may be
// invalid UTF-8) and String's output. Other implementations of the rule (the web UI's
// JavaScript) check themselves against the same file.
type vector struct {
	In  string `json:"in_hex"`
	Out string `json:"out"`
}

// vectorInputs are the inputs of testdata/vectors.json: hostile names, every byte,
// a rune of each category near its edges, and random mixes.
func vectorInputs() []string {
	ins := []string{"", "/usr/bin/curl", "x\x1b[2K\rfirefox\x1b[8m", "a\nb\r\n", `C:\Program Files\latch.exe`,
		`C:\Users\x`, `\u{202E}`, "\\\x1b", "\\\u202E", "\\\xff", `end\`, `a\\b`, "evil\u202Etxt.exe", "fire\u200Dfox",
		"\xff\xfe\xc3", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\xaf", "e\u0301", "日本語", "🙂"}
	for c := range 256 {
		ins = append(ins, string([]byte{byte(c)}))
	}
	for _, r := range []rune{0x80, 0x9f, 0xa0, 0xa1, 0xad, 0x34f, 0x378, 0x61c, 0x115f, 0x180e, 0x2000, 0x200a,
		0x200b, 0x200f, 0x2028, 0x2029, 0x202a, 0x202f, 0x205f, 0x2060, 0x2064, 0x2066, 0x206f, 0x3000, 0x3164,
		0xd7ff, 0xe000, 0xf8ff, 0xfdd0, 0xfeff, 0xfff9, 0xfffb, 0xfffc, 0xfffd, 0xfffe, 0xffff, 0x1d173,
		0x1f3fb, 0xe0001, 0xe0020, 0xe007f, 0xe0100, 0xf0000, 0x10fffd, 0x10ffff, 0x31350, 0x2ebf0} {
		ins = append(ins, string(r), `\`+string(r))
	}
	rng := rand.New(rand.NewPCG(14, 3))
	for range 200 {
		var b []byte
		for range 1 + rng.IntN(6) {
			switch rng.IntN(4) {
			case 0:
				b = append(b, byte(rng.IntN(256)))
			case 1:
				b = append(b, `\xu`[rng.IntN(3)])
			default:
				r := rune(rng.IntN(unicode.MaxRune + 1))
				if r >= 0xd800 && r <= 0xdfff {
					r = 'z'
				}
				b = append(b, string(r)...)
			}
		}
		ins = append(ins, string(b))
	}
	return ins
}

// TestVectors checks String against testdata/vectors.json (go test -update rewrites it).
func TestVectors(t *testing.T) {
	path := filepath.Join("testdata", "vectors.json")
	if *update {
		var vs []vector
		for _, in := range vectorInputs() {
			vs = append(vs, vector{hex.EncodeToString([]byte(in)), String(in)})
		}
		b, err := json.MarshalIndent(vs, "", " ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 500 {
		t.Fatalf("%s has %d vectors", path, len(vs))
	}
	for _, v := range vs {
		in, err := hex.DecodeString(v.In)
		if err != nil {
			t.Fatal(err)
		}
		if got := String(string(in)); got != v.Out {
			t.Errorf("String(%q) = %q, vectors.json says %q", in, got, v.Out)
		}
		checkEscaped(t, string(in))
	}
}
