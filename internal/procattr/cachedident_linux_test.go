package procattr

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/latchfw/latch/internal/engine"
)

// TestCachedIdentityRecheckedWhenWarm is review 35's test with the cache warm:
// after a few attributions a verified process's path is checked by the quick
// statx (procEntry.stillNamed), which must still see the file renamed away
// (attribution then names the process by its new path, verified) or deleted
// and replaced (unverified), and which a change of the file's attributes only
// sends back to the full check (still verified).
func TestCachedIdentityRecheckedWhenWarm(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	remote := netip.MustParseAddrPort("198.18.0.2:9")
	forger := otherExe(t)
	for _, how := range []string{"renamed", "deleted", "chmod"} {
		for _, m := range modes {
			t.Run(how+"/"+m.name, func(t *testing.T) {
				r := newResolverIn(t, ns, quickRescan(m.opts))
				prog := filepath.Join(t.TempDir(), "prog")
				if err := copyFile(prog, clientExe); err != nil {
					t.Fatal(err)
				}
				c := startClientVia(t, ns, func(args []string) []string { args[0] = prog; return args }, "tcp", remote)
				for range 3 {
					wantIdentity(t, resolveIdentity(t, r, c, remote), prog, engine.IdentityVerified, "")
				}
				switch how {
				case "renamed":
					if err := os.Rename(prog, prog+".old"); err != nil {
						t.Fatal(err)
					}
					if err := copyFile(prog, forger); err != nil {
						t.Fatal(err)
					}
					wantIdentity(t, resolveIdentity(t, r, c, remote), prog+".old", engine.IdentityVerified, "")
				case "deleted":
					if err := os.Remove(prog); err != nil {
						t.Fatal(err)
					}
					if err := copyFile(prog, forger); err != nil {
						t.Fatal(err)
					}
					wantIdentity(t, resolveIdentity(t, r, c, remote), prog, engine.IdentityUnverified, "deleted or replaced")
				case "chmod":
					if err := os.Chmod(prog, 0o700); err != nil {
						t.Fatal(err)
					}
					wantIdentity(t, resolveIdentity(t, r, c, remote), prog, engine.IdentityVerified, "")
				}
				// And again, through whatever the cache holds now.
				p := resolveIdentity(t, r, c, remote)
				if p.Exe == prog && p.Identity == engine.IdentityVerified && how != "chmod" {
					t.Errorf("second look after the file was %s: exe %q verified; want it not the verified program at %s", how, p.Exe, prog)
				}
			})
		}
	}
}
