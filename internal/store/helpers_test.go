package store

import (
	"os"
	"strings"
)

func pidSelf() int                { return os.Getpid() }
func contains(s, sub string) bool { return strings.Contains(s, sub) }
