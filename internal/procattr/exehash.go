package procattr

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
)

// HashFile returns the SHA-256 of the file at path (for `rules add --pin`).
func HashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	hw := sha256.New()
	if _, err := io.Copy(hw, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(hw.Sum(nil)), nil
}
