//go:build !unix

package blocklist

const (
	noFollow        = 0
	clientOpenFlags = 0
	daemonOpenFlags = 0
)
