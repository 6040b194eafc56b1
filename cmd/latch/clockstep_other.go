//go:build !linux

package main

import "context"

// watchClockSteps waits for ctx: only Linux reports steps of the wall clock here.
func watchClockSteps(ctx context.Context, stepped func()) error {
	<-ctx.Done()
	return nil
}
