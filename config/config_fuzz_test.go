package config

import (
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// FuzzLoad: configuration files and environment variables. Load must never
// panic; a configuration it accepts validates, survives a YAML round trip
// unchanged, and its Redacted form hides the secrets.
func FuzzLoad(f *testing.F) {
	if data, err := os.ReadFile(examplePath); err == nil {
		f.Add(data, uint8(0), "")
	}
	f.Add([]byte(fullYAML), uint8(3), "x")
	f.Add([]byte("port: 70000\n"), uint8(2), "99999")
	f.Add([]byte("database:\n  url: postgres://u:secret@db/x?password=p\n"), uint8(7), "postgres://u:pw@h/db")
	f.Add([]byte("turn:\n  ttl: 1h\n  uris: [\"turn:x\"]\n  password: s\n"), uint8(11), "20/s")
	f.Add([]byte("a: &a [*a]\n"), uint8(0), "")
	f.Add([]byte("log_level: !!binary aW5mbw==\n"), uint8(4), "INFO")
	f.Add([]byte("access_token_lifetime: 1e3h\n---\nport: 1\n"), uint8(15), "-1s")
	dir := f.TempDir()
	path := filepath.Join(dir, "agentspace.yaml")
	f.Fuzz(func(t *testing.T, data []byte, envIdx uint8, envValue string) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		ev := EnvVars[int(envIdx)%len(EnvVars)]
		env := func(name string) (string, bool) {
			if name == ev.Name {
				return envValue, true
			}
			return "", false
		}
		start := time.Now()
		c, err := Load(path, env)
		if d := time.Since(start); d > 5*time.Second { // configs are small: a slow one is a bug
			t.Fatalf("Load took %s on %q", d, data)
		}
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Load accepted a configuration that does not validate: %v", err)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("marshalling an accepted configuration: %v", err)
		}
		if err := os.WriteFile(path, out, 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := Load(path, nil)
		if err != nil {
			t.Fatalf("the YAML of an accepted configuration does not load: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(again, c) {
			t.Fatalf("YAML round trip changed the configuration:\n got  %+v\n want %+v\n%s", again, c, out)
		}
		r := c.Redacted()
		if s := r.Registration.SharedSecret; s != "" && s != redacted {
			t.Fatalf("Redacted kept the shared secret %q", s)
		}
		if s := r.TURN.Password; s != "" && s != redacted {
			t.Fatalf("Redacted kept the TURN password %q", s)
		}
		if u, err := url.Parse(c.Database.URL); err == nil && u.User != nil {
			if pw, has := u.User.Password(); has && pw != "" && pw != redacted {
				ru, err := url.Parse(r.Database.URL)
				if err == nil && ru.User != nil {
					if rpw, _ := ru.User.Password(); rpw == pw {
						t.Fatalf("Redacted kept the database password of %q: %q", c.Database.URL, r.Database.URL)
					}
				}
				if err != nil && r.Database.URL != redacted && strings.Contains(r.Database.URL, pw) {
					t.Fatalf("Redacted kept the database password: %q", r.Database.URL)
				}
			}
		}
	})
}
