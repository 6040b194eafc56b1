package linux

import "errors"

// errSocketPin wraps install's error when the ruleset could not run the
// kernel fast path's socket pin (Config.FastSocketPin).
var errSocketPin = errors.New("the ruleset cannot pin allowed UDP and ICMP echo flows to their socket")

// noSocketPin says what a ruleset without the socket pin lets happen.
const noSocketPin = "an allowed UDP or ICMP echo flow passes from any socket while its conntrack entry lives (another program that binds the local port its socket freed sends on it unasked)"

// FastSocketPin reports whether the installed ruleset runs
// Config.FastSocketPin: nil if it does, else why not (none configured, not
// installed yet, or the firewall refused it).
func (b *Backend) FastSocketPin() error {
	if b.cfg.FastSocketPin == "" {
		return errors.New("no socket pin configured")
	}
	p := b.sockPinErr.Load()
	if p == nil {
		return errors.New("the ruleset is not installed yet")
	}
	return *p
}
