package openclaw

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteResult says how a config file was written.
type WriteResult struct {
	// Changed is false when the file already said everything (not written).
	Changed bool
	// InPlace: only the changed values were edited; comments, order and
	// formatting of everything else are as they were. Otherwise the file
	// was rewritten as standard JSON (as OpenClaw's own writer does), which
	// drops JSON5 comments.
	InPlace bool
	// Backup is the copy of the previous file (path + ".bak").
	Backup string
}

// WriteMerged writes merged over the config file at cfg.Path, which must be
// unchanged since cfg was loaded from it. The previous file is kept as
// path.bak (same mode); the new one replaces it atomically, readable and
// writable by its owner only (it holds access tokens).
func WriteMerged(cfg *Config, merged map[string]any) (WriteResult, error) {
	var res WriteResult
	if equalJSON(cfg.Raw, merged) {
		return res, nil
	}
	src, err := os.ReadFile(cfg.Path)
	if err != nil {
		return res, err
	}
	if now, err := decodeJSON5(src); err != nil || !equalJSON(now, cfg.Raw) {
		return res, fmt.Errorf("%s changed while linking; run again", cfg.Path)
	}
	out, err := editJSON5(src, cfg.Raw, merged)
	if err == nil {
		var check map[string]any
		if check, err = decodeJSON5(out); err == nil && !equalJSON(check, merged) {
			err = fmt.Errorf("the in-place edit does not decode to the merged config")
		}
	}
	res.InPlace = err == nil
	if !res.InPlace {
		e := &editor{unit: "  "}
		out = []byte(e.render(merged, "") + "\n")
	}
	info, err := os.Stat(cfg.Path)
	if err != nil {
		return res, err
	}
	// The file now holds access tokens: readable by its owner only.
	mode := info.Mode().Perm() &^ 0o077
	res.Backup = cfg.Path + ".bak"
	if err := writeAtomic(res.Backup, src, info.Mode().Perm()); err != nil {
		return res, fmt.Errorf("keeping a backup: %w", err)
	}
	if err := writeAtomic(cfg.Path, out, mode); err != nil {
		return res, err
	}
	res.Changed = true
	return res, nil
}

// writeAtomic writes data to path through a temporary file and a rename.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
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
	return os.Rename(tmp.Name(), path)
}

// Render writes a value the way WriteMerged writes new parts: JSON5 with
// bare identifier keys (valid JSON5, readable like OpenClaw's docs).
func Render(v any) string {
	e := &editor{unit: "  ", bareKeys: true}
	return e.render(v, "")
}
