package rooms

import (
	"path/filepath"
	"sync"
	"testing"
)

// Instances sharing a data directory may start at once: they must all end
// up with the one key on disk.
func TestLoadOrCreateSigningKeyConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signing.key")
	const n = 16
	keys := make([]*SigningKey, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { keys[i], errs[i] = LoadOrCreateSigningKey(path) })
	}
	wg.Wait()
	onDisk, err := LoadOrCreateSigningKey(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if keys[i].ID != onDisk.ID || !keys[i].PrivateKey.Equal(onDisk.PrivateKey) {
			t.Errorf("caller %d got key %s, the file holds %s", i, keys[i].ID, onDisk.ID)
		}
	}
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".signing.key-*"))
	if len(matches) != 0 {
		t.Errorf("temporary files left behind: %v", matches)
	}
}
