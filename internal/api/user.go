package api

import (
	"errors"
	"fmt"
	"os/user"
	"runtime"
)

// SystemUser reports whether name is an account on this system (os/user.Lookup). On
// Windows every name is taken as it is: accounts there may be domain accounts the
// service cannot always look up.
func SystemUser(name string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	_, err := user.Lookup(name)
	var unknown user.UnknownUserError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &unknown):
		return fmt.Errorf("no such user on this system (a rule for an account that does not exist yet takes its numeric uid)")
	}
	return fmt.Errorf("looking the user up: %v", err)
}
