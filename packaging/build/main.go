// Command build makes latch's .deb and .rpm packages with nfpm (as a library), from
// packaging/nfpm.yaml: it builds the latch binary, generates the man page and shell
// completions from the binary's own help, the Debian copyright and changelog files,
// and writes the packages into the output directory. Run it from the repository's
// root (`make package` does):
//
//	go run ./packaging/build -version 0.1.0 -out dist
package main

import (
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
)

func main() {
	version := flag.String("version", "0.1.0", "package version (Debian and RPM rules: starts with a digit)")
	out := flag.String("out", "dist", "output directory")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH to build for")
	formats := flag.String("formats", "deb,rpm", "package formats, comma-separated")
	flag.Parse()
	if err := build(*version, *out, *arch, strings.Split(*formats, ",")); err != nil {
		fmt.Fprintf(os.Stderr, "packaging/build: %v\n", err)
		os.Exit(1)
	}
}

// release is the packaging revision (Debian revision, RPM release) of this version.
const release = "1"

func build(version, out, arch string, formats []string) error {
	if version == "" || version[0] < '0' || version[0] > '9' {
		return fmt.Errorf("version %q: must start with a digit", version)
	}
	work, err := os.MkdirTemp("", "latch-package-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	date := buildDate()

	bin := filepath.Join(work, "latch")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version, "-o", bin, "./cmd/latch")
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+arch, "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/latch: %v\n%s", err, b)
	}
	// Generated from the binary's help (run on this machine: the build's own arch).
	helpBin := bin
	if arch != runtime.GOARCH {
		helpBin = filepath.Join(work, "latch-host")
		if b, err := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", helpBin, "./cmd/latch").CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/latch (host): %v\n%s", err, b)
		}
	}
	run := func(args ...string) ([]byte, error) {
		c := exec.Command(helpBin, args...)
		c.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", date.Unix()))
		b, err := c.Output()
		if err != nil {
			return nil, fmt.Errorf("latch %s: %w", strings.Join(args, " "), err)
		}
		return b, nil
	}
	man, err := run("help", "--man")
	if err != nil {
		return err
	}
	files := map[string][]byte{}
	if files["latch.8.gz"], err = gz(man, date); err != nil {
		return err
	}
	for shell, name := range map[string]string{"bash": "latch.bash", "zsh": "_latch", "fish": "latch.fish"} {
		if files[name], err = run("completion", shell); err != nil {
			return err
		}
	}
	license, err := os.ReadFile("LICENSE")
	if err != nil {
		return fmt.Errorf("read LICENSE (run from the repository's root): %w", err)
	}
	files["copyright"] = []byte(debCopyright(license))
	maint := "latch developers <latch@latchfw.org>"
	changelog := fmt.Sprintf("latch (%s-%s) unstable; urgency=medium\n\n  * Built from the latch repository; see its history for the changes.\n\n -- %s  %s\n",
		version, release, maint, date.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	if files["changelog.Debian.gz"], err = gz([]byte(changelog), date); err != nil {
		return err
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(work, name), b, 0o644); err != nil {
			return err
		}
	}

	env := map[string]string{"VERSION": version, "RELEASE": release, "ARCH": arch, "BUILD": work}
	// Expanded here, for every field: nfpm's own expansion skips the overrides.
	yml, err := os.ReadFile("packaging/nfpm.yaml")
	if err != nil {
		return fmt.Errorf("read packaging/nfpm.yaml (run from the repository's root): %w", err)
	}
	mapping := func(k string) string { return env[k] }
	cfg, err := nfpm.ParseWithEnvMapping(strings.NewReader(os.Expand(string(yml), mapping)), mapping)
	if err != nil {
		return fmt.Errorf("packaging/nfpm.yaml: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, format := range formats {
		info, err := cfg.Get(format)
		if err != nil {
			return fmt.Errorf("%s: %w", format, err)
		}
		info = nfpm.WithDefaults(info)
		info.MTime = date
		pkg, err := nfpm.Get(format)
		if err != nil {
			return err
		}
		target := filepath.Join(out, pkg.ConventionalFileName(info))
		f, err := os.Create(target)
		if err != nil {
			return err
		}
		info.Target = target
		if err := pkg.Package(info, f); err != nil {
			f.Close()
			os.Remove(target)
			return fmt.Errorf("%s package: %w", format, err)
		}
		if err := f.Close(); err != nil {
			return err
		}
		fmt.Println(target)
	}
	return nil
}

// buildDate is SOURCE_DATE_EPOCH, else the last commit's time, else now: the same
// source gives the same dates.
func buildDate() time.Time {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var sec int64
		if _, err := fmt.Sscan(s, &sec); err == nil {
			return time.Unix(sec, 0).UTC()
		}
	}
	if b, err := exec.Command("git", "log", "-1", "--format=%ct").Output(); err == nil {
		var sec int64
		if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &sec); err == nil {
			return time.Unix(sec, 0).UTC()
		}
	}
	return time.Now().UTC()
}

// gz compresses b the way Debian wants (no name, fixed time, best compression).
func gz(b []byte, date time.Time) ([]byte, error) {
	var buf bytes.Buffer
	w, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	w.ModTime = date
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// debCopyright is /usr/share/doc/latch/copyright in Debian's machine-readable format;
// the Apache-2.0 text itself is in /usr/share/common-licenses.
func debCopyright(license []byte) string {
	if !bytes.Contains(license, []byte("Apache License")) || !bytes.Contains(license, []byte("Version 2.0")) {
		panic("LICENSE is no longer Apache-2.0: update packaging/build's copyright file")
	}
	return `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: latch
Source: https://latchfw.org

Files: *
Copyright: 2026 latch developers
License: Apache-2.0

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License");
 you may not use this file except in compliance with the License.
 You may obtain a copy of the License at
 .
 http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS,
 WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 See the License for the specific language governing permissions and
 limitations under the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0
 can be found in "/usr/share/common-licenses/Apache-2.0".
`
}
