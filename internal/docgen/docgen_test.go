package docgen

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func testPage() *Page {
	return &Page{
		Command: "latch", Section: 8, Version: "1.2.3", Date: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC),
		Summary: "a firewall", Usage: "Usage: latch VERB\n.starts with a dot\nback\\slash\n",
		Verbs: []Verb{
			{"daemon", "Usage: latch daemon [flags]\n\nHolds connections.\n\n  --state-dir DIR   state\n  --inbound         also inbound\n  --exempt-loopback=BOOL x\n"},
			{"rules", "Usage: latch rules list [--json]\n  rules add [--app PATH] (--for DURATION|forever)\n"},
			{"version", "Usage: latch version\n\nPrints it.\n"},
		},
		Files:   map[string]string{"/etc/latch/latch.toml": "configuration"},
		SeeAlso: []string{"systemctl(1)"},
	}
}

func TestFlags(t *testing.T) {
	got := Flags(testPage().Verbs[0].Help)
	want := []string{"--exempt-loopback", "--inbound", "--state-dir"}
	if !slices.Equal(got, want) {
		t.Fatalf("Flags = %v, want %v", got, want)
	}
	if got := Flags("see 'latch help daemon', a-b --x --json|--for"); !slices.Equal(got, []string{"--for", "--json", "--x"}) {
		t.Fatalf("Flags = %v", got)
	}
}

func TestManRendersEveryVerb(t *testing.T) {
	var b bytes.Buffer
	if err := Man(&b, testPage()); err != nil {
		t.Fatal(err)
	}
	man := b.String()
	for _, want := range []string{".TH LATCH 8 \"2026-01-02\"", ".SS daemon", ".SS rules", ".SS version", `\-\-state\-dir`, `\&.starts with a dot`, `back\eslash`, ".BR systemctl (1)"} {
		if !strings.Contains(man, want) {
			t.Errorf("man page lacks %q:\n%s", want, man)
		}
	}
	if _, err := exec.LookPath("man"); err != nil {
		t.Skip("man not installed")
	}
	p := filepath.Join(t.TempDir(), "latch.8")
	os.WriteFile(p, b.Bytes(), 0o644)
	cmd := exec.Command("man", "--warnings", "-l", "-E", "UTF-8", p)
	cmd.Env = append(os.Environ(), "MANWIDTH=80")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("man: %v\n%s", err, stderr.String())
	}
	for _, want := range []string{"--state-dir", ".starts with a dot", `back\slash`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("rendered man page lacks %q:\n%s", want, out)
		}
	}
}

// TestCompletions: each script names every verb and flag, and its shell accepts it.
func TestCompletions(t *testing.T) {
	for _, sh := range []struct{ shell, check string }{{"bash", "-n"}, {"zsh", "-n"}, {"fish", "--no-execute"}} {
		var b bytes.Buffer
		if err := Completion(&b, sh.shell, testPage()); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"daemon", "rules", "version", "state-dir", "inbound", "json", "for"} {
			if !strings.Contains(b.String(), want) {
				t.Errorf("%s completion lacks %q", sh.shell, want)
			}
		}
		if _, err := exec.LookPath(sh.shell); err != nil {
			if os.Getenv("CI") != "" {
				t.Errorf("%s not installed (test.sh installs it)", sh.shell)
			}
			continue
		}
		p := filepath.Join(t.TempDir(), "c")
		os.WriteFile(p, b.Bytes(), 0o644)
		if out, err := exec.Command(sh.shell, sh.check, p).CombinedOutput(); err != nil {
			t.Errorf("%s %s: %v\n%s\n%s", sh.shell, sh.check, err, out, b.String())
		}
	}
	if err := Completion(&bytes.Buffer{}, "tcsh", testPage()); err == nil {
		t.Error("tcsh accepted")
	}
}

// TestBashCompletionCompletes runs the bash script the way bash does on TAB.
func TestBashCompletionCompletes(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	var b bytes.Buffer
	Completion(&b, "bash", testPage())
	p := filepath.Join(t.TempDir(), "c.bash")
	os.WriteFile(p, b.Bytes(), 0o644)
	script := `source ` + p + `
COMP_WORDS=(latch da); COMP_CWORD=1; _latch; echo "1:${COMPREPLY[*]}"
COMP_WORDS=(latch daemon --in); COMP_CWORD=2; _latch; echo "2:${COMPREPLY[*]}"`
	out, err := exec.Command("bash", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(string(out), "1:daemon\n") || !strings.Contains(string(out), "2:--inbound\n") {
		t.Fatalf("completions:\n%s", out)
	}
}
