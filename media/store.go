// Package media keeps the bytes of the content repository on disk and makes
// thumbnails of images. Records of uploads (type, name, owner) live in the
// database (storage.Media); this package only deals with files.
package media

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
)

// idAlphabet is what media ids are made of: URL-path-safe without escaping.
const idAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// idLength gives 24 × log2(62) ≈ 143 random bits: ids cannot be guessed,
// which matters because legacy downloads need no authentication.
const idLength = 24

var validID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,255}$`)

// ErrInvalidID is returned for media ids that this server could not have
// issued (and which must never reach the filesystem).
var ErrInvalidID = errors.New("invalid media id")

// NewID returns a fresh random media id.
func NewID() string {
	b := make([]byte, idLength)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	for i := range b {
		// 256 % 62 leaves a slight bias; irrelevant for unguessability at 143 bits.
		b[i] = idAlphabet[int(b[i])%len(idAlphabet)]
	}
	return string(b)
}

// ValidID reports whether id has the shape of a media id.
func ValidID(id string) bool { return validID.MatchString(id) }

// Store keeps media files under one directory, sharded by the first
// characters of the id so no directory grows too large.
type Store struct {
	dir string
	// thumbSlots bounds concurrent thumbnail generation: decoding a large
	// image takes up to maxSourcePixels*4 bytes of memory.
	thumbSlots chan struct{}
}

// maxConcurrentThumbnails is how many images may be decoded at once.
const maxConcurrentThumbnails = 4

// NewStore returns a store rooted at dir (created on first write).
func NewStore(dir string) *Store {
	return &Store{dir: dir, thumbSlots: make(chan struct{}, maxConcurrentThumbnails)}
}

// path is where the original of id lives: <dir>/ab/cd/<id>.
func (s *Store) path(id string) string {
	return filepath.Join(s.dir, shard(id), id)
}

func shard(id string) string {
	a, b := "__", "__"
	if len(id) >= 2 {
		a = id[:2]
	}
	if len(id) >= 4 {
		b = id[2:4]
	}
	return filepath.Join(a, b)
}

// Saved describes a file written by Save.
type Saved struct {
	Size   int64
	SHA256 string // hex
}

// Save streams r into the file for id. It writes a temporary file in the
// same directory and renames it into place only when r is fully read, so a
// failed or aborted upload never leaves a partial file under a media id.
func (s *Store) Save(id string, r io.Reader) (Saved, error) {
	if !ValidID(id) {
		return Saved{}, ErrInvalidID
	}
	final := s.path(id)
	tmp, err := createTemp(filepath.Dir(final), id)
	if err != nil {
		return Saved{}, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), r)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return Saved{}, fmt.Errorf("writing media %s: %w", id, err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		_ = os.Remove(tmp.Name())
		return Saved{}, fmt.Errorf("storing media %s: %w", id, err)
	}
	return Saved{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// createTemp makes dir (0700) and a temporary file in it.
func createTemp(dir, id string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating media directory: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+id+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("creating media file: %w", err)
	}
	return f, nil
}

// Open opens the original file of id.
func (s *Store) Open(id string) (*os.File, error) {
	if !ValidID(id) {
		return nil, ErrInvalidID
	}
	f, err := os.Open(s.path(id))
	if err != nil {
		return nil, fmt.Errorf("opening media %s: %w", id, err)
	}
	return f, nil
}

// Remove deletes the file of id and its cached thumbnails (used when
// recording an upload fails after the file was written).
func (s *Store) Remove(id string) error {
	if !ValidID(id) {
		return ErrInvalidID
	}
	if err := os.RemoveAll(s.thumbDir(id)); err != nil {
		return fmt.Errorf("removing thumbnails of %s: %w", id, err)
	}
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing media %s: %w", id, err)
	}
	return nil
}
