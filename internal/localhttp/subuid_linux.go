package localhttp

import "github.com/latchfw/latch/internal/subid"

// subuidFile lists each user's subordinate uids (see package subid).
const subuidFile = subid.DefaultFile

// setSubuidFile makes ownerUID read file from now on (tests).
func setSubuidFile(file string) { subid.SetFile(file) }

// ownerUID is the user whose subordinate uid uid is (in /etc/subuid), else uid itself
// (see subid.Owner: above 32 bits for a range whose user name is not found).
func ownerUID(uid uint32) uint64 { return subid.Owner(uid) }
