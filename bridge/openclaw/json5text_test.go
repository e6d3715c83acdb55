package openclaw

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An in-place edit keeps comments, quoting and order, adds and changes
// only what differs, and decodes to the merged document.
func TestEditJSON5InPlace(t *testing.T) {
	src := []byte(`// my config
{
  gateway: { port: 18789 }, // keep me
  'quoted': "yes",
  bindings: [
    /* first */ { agentId: "a", match: { channel: "x" } }
  ],
  channels: {
    matrix: {
      accounts: {
        a: { homeserver: "http://old", dm: { policy: "pairing" } },
      },
    },
  },
}
`)
	old, err := decodeJSON5(src)
	if err != nil {
		t.Fatal(err)
	}
	merged := deepCopy(old).(map[string]any)
	acc := dig(merged, "channels", "matrix", "accounts", "a").(map[string]any)
	acc["homeserver"] = "http://new"
	acc["accessToken"] = "tok"
	dig(merged, "channels", "matrix").(map[string]any)["enabled"] = true
	merged["bindings"] = append(merged["bindings"].([]any), map[string]any{"agentId": "b", "match": map[string]any{"channel": "matrix"}})
	merged["tools"] = map[string]any{"x": true}

	out, err := editJSON5(src, old, merged)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeJSON5(out)
	if err != nil {
		t.Fatalf("result does not parse: %v\n%s", err, out)
	}
	if !equalJSON(got, merged) {
		t.Fatalf("result decodes to %v", got)
	}
	for _, keep := range []string{"// my config", "// keep me", "'quoted': \"yes\"", "/* first */", `dm: { policy: "pairing" }`} {
		if !strings.Contains(string(out), keep) {
			t.Errorf("lost %q:\n%s", keep, out)
		}
	}
	if !strings.Contains(string(out), `homeserver: "http://new"`) || !strings.Contains(string(out), `accessToken: "tok"`) {
		t.Errorf("edits missing:\n%s", out)
	}
	if strings.Index(string(out), "gateway") > strings.Index(string(out), "tools") {
		t.Errorf("order changed:\n%s", out)
	}
}

// WriteMerged keeps a backup, makes the file private, writes nothing when
// nothing changes, and refuses a file changed behind its back.
func TestWriteMerged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "openclaw.json")
	orig := "{\n  // hello\n  agents: { entries: { a: {} } },\n}\n"
	if err := os.WriteFile(path, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := WriteMerged(cfg, deepCopy(cfg.Raw).(map[string]any)); err != nil || res.Changed {
		t.Fatalf("unchanged document written: %+v %v", res, err)
	}
	merged := deepCopy(cfg.Raw).(map[string]any)
	merged["bindings"] = []any{bindingFor("a", "!r:x")}
	res, err := WriteMerged(cfg, merged)
	if err != nil || !res.Changed || !res.InPlace {
		t.Fatalf("%+v %v", res, err)
	}
	bak, _ := os.ReadFile(path + ".bak")
	if string(bak) != orig {
		t.Fatalf("backup %q", bak)
	}
	info, _ := os.Stat(path)
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", info.Mode().Perm())
	}
	now, _ := os.ReadFile(path)
	if !strings.Contains(string(now), "// hello") || !strings.Contains(string(now), `peer: { kind: "channel", id: "!r:x" }`) {
		t.Fatalf("written:\n%s", now)
	}
	// cfg is now stale: the file changed since it was loaded.
	merged["tools"] = map[string]any{}
	if _, err := WriteMerged(cfg, merged); err == nil {
		t.Fatal("a stale config was written")
	}
}
