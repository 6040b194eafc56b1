//go:build !windows

package windows

import (
	"context"
	"fmt"
)

// fltDialer on other platforms: the Filter Manager exists only on Windows.
func fltDialer(name string, _ int) Dialer {
	return func(context.Context) (Port, error) {
		return nil, fmt.Errorf("the Filter Manager port %s exists only on Windows (use EmulatedDialer with the driver's latch-sim)", name)
	}
}

// systemQueriers on other platforms: nothing to ask.
func systemQueriers() (DeviceQuerier, ProcessQuerier, ServiceQuerier) { return nil, nil, nil }
