//go:build cgo && !osusergo

package subid

// With cgo, os/user asks NSS (LDAP, SSSD, systemd-homed users): look up there the user
// names /etc/passwd lacks.
func init() { nssLookup = LookupUser }
