package containername

import (
	"testing"
	"unicode/utf8"
)

// FuzzParseState: docker's config.v2.json and podman's containers.json parsers take
// any bytes without panicking, name only the container whose directory the docker
// file is in, only 64-digit ids from podman's, and only names of 1 to MaxNameLen
// bytes of valid UTF-8 (JSON strings decode to UTF-8).
func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"ID":"`+idA+`","Name":"/web-1","State":{"Running":true}}`), idA)
	f.Add([]byte(`[{"id":"`+idB+`","names":["db-1","alias"]},{"id":"x","names":[]}]`), "overlay-containers")
	f.Add([]byte(`{"Name":"/\u001b[2K\rfirefox\u202e"}`), idC)
	f.Add([]byte("[{\"id\":\""+idC+"\",\"names\":[\"\xff\xfe\"]}]"), "vfs-containers")
	f.Add([]byte(`{"ID":"`+idB+`","Name":"/other"}`), idA)
	f.Add([]byte(`[`), "")
	f.Fuzz(func(t *testing.T, data []byte, dir string) {
		for name, names := range map[string]map[string]string{"docker": parseDocker(data, dir), "podman": parsePodman(data, dir)} {
			for id, n := range names {
				if name == "docker" && id != dir {
					t.Fatalf("docker file in %q names container %q", dir, id)
				}
				if name == "podman" && !IsID(id) {
					t.Fatalf("podman id %q", id)
				}
				if !validName(n) || !utf8.ValidString(n) {
					t.Fatalf("%s name %q", name, n)
				}
			}
		}
	})
}
