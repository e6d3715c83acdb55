package rooms

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
)

// SigningKey is the server's ed25519 event signing key.
type SigningKey struct {
	ID         gomatrixserverlib.KeyID
	PrivateKey ed25519.PrivateKey
}

// LoadOrCreateSigningKey reads the key file (Synapse's format: one line
// "ed25519 <version> <unpadded base64 seed>") or creates it with mode 0600.
func LoadOrCreateSigningKey(path string) (*SigningKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		seed := make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return nil, fmt.Errorf("generating signing key: %w", err)
		}
		version := base64.RawURLEncoding.EncodeToString(seed[:3])
		version = strings.NewReplacer("-", "a", "_", "b").Replace(version)
		line := fmt.Sprintf("ed25519 %s %s\n", version, base64.RawStdEncoding.EncodeToString(seed))
		// Several instances may start at once on one shared data directory:
		// the file appears complete or not at all, the first writer wins,
		// and everyone uses what is on disk.
		if err := createExclusive(path, []byte(line)); err != nil {
			return nil, fmt.Errorf("writing signing key %s: %w", path, err)
		}
		if data, err = os.ReadFile(path); err != nil {
			return nil, fmt.Errorf("reading signing key %s: %w", path, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("reading signing key %s: %w", path, err)
	}
	fields := strings.Fields(string(data))
	if len(fields) != 3 || fields[0] != "ed25519" {
		return nil, fmt.Errorf("signing key %s: expected \"ed25519 <version> <base64 seed>\"", path)
	}
	seed, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(fields[2], "="))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("signing key %s: bad seed", path)
	}
	return &SigningKey{
		ID:         gomatrixserverlib.KeyID("ed25519:" + fields[1]),
		PrivateKey: ed25519.NewKeyFromSeed(seed),
	}, nil
}

// createExclusive writes data to a temporary file next to path and links it
// to path, so path appears with its whole content; if path exists already
// (another process won), it is left alone and nil is returned.
func createExclusive(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".signing.key-*") // mode 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}
