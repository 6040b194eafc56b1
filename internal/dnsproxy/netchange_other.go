//go:build !linux

package dnsproxy

import "errors"

// watchNetwork: no pool here (poolSize is 0), nothing to watch for.
func watchNetwork(changed func()) (stop func(), err error) {
	return nil, errors.New("dnsproxy: network changes are watched on Linux only")
}
