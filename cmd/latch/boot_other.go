//go:build !linux

package main

import (
	"context"
	"errors"
)

func runBootProtect(ctx context.Context, args []string) error {
	return errors.New("boot-protect is for Linux (on Windows the driver holds connections while the service is down)")
}
