package config

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

const examplePath = "../agentspace.example.yaml"

// envMap returns an env lookup function backed by m.
func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// writeFile writes content to a temporary agentspace.yaml and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agentspace.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// joinedErrors returns the individual errors of an errors.Join tree below err.
func joinedErrors(err error) []error {
	for err != nil {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			return j.Unwrap()
		}
		err = errors.Unwrap(err)
	}
	return nil
}

// leafKeys returns the dotted YAML keys of all leaf settings of t.
func leafKeys(t reflect.Type, prefix string) []string {
	var keys []string
	unmarshaler := reflect.TypeFor[yaml.Unmarshaler]()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if prefix != "" {
			name = prefix + "." + name
		}
		if f.Type.Kind() == reflect.Struct && !reflect.PointerTo(f.Type).Implements(unmarshaler) {
			keys = append(keys, leafKeys(f.Type, name)...)
			continue
		}
		keys = append(keys, name)
	}
	return keys
}

// yamlKeys returns the dotted paths of all mapping keys in a YAML document.
func yamlKeys(t *testing.T, data []byte) []string {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var keys []string
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, prefix)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				p := n.Content[i].Value
				if prefix != "" {
					p = prefix + "." + p
				}
				if n.Content[i+1].Kind == yaml.MappingNode {
					walk(n.Content[i+1], p)
				} else {
					keys = append(keys, p)
				}
			}
		}
	}
	walk(&doc, "")
	return keys
}

func TestDefault(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"ServerName", c.ServerName, "localhost"},
		{"BindAddress", c.BindAddress, "0.0.0.0"},
		{"Port", c.Port, 8008},
		{"PublicBaseURL", c.PublicBaseURL, ""},
		{"LogLevel", c.LogLevel, "info"},
		{"AdminUsers", len(c.AdminUsers), 0},
		{"Database.Path", c.Database.Path, "./data/agentspace.db"},
		{"Database.URL", c.Database.URL, ""},
		{"Registration.Enabled", c.Registration.Enabled, false},
		{"Registration.SharedSecret", c.Registration.SharedSecret, ""},
		{"Registration.AllowGuests", c.Registration.AllowGuests, false},
		{"RateLimit.Enabled", c.RateLimit.Enabled, true},
		{"RateLimit.PerSecond", c.RateLimit.PerSecond, 10.0},
		{"RateLimit.Burst", c.RateLimit.Burst, 50},
		{"Media.Path", c.Media.Path, ""},
		{"Media.MaxUploadBytes", c.Media.MaxUploadBytes, int64(50 << 20)},
		{"MaxRequestBodyBytes", c.MaxRequestBodyBytes, int64(1048576)},
		{"AccessTokenLifetime", c.AccessTokenLifetime.Duration, time.Hour},
		{"BcryptCost", c.BcryptCost, 12},
		{"MaxLongPollsPerUser", c.MaxLongPollsPerUser, 10},
		{"TURN.URIs", len(c.TURN.URIs), 0},
		{"TURN.TTL", c.TURN.TTL.Duration, 24 * time.Hour},
		{"AppServiceConfigFiles", len(c.AppServiceConfigFiles), 0},
		{"Agents.UserPrefix", c.Agents.UserPrefix, "agent_"},
		{"Agents.LoopBreaker.ObserverRooms", c.Agents.LoopBreaker.ObserverRooms, true},
		{"Agents.LoopBreaker.OtherRooms", c.Agents.LoopBreaker.OtherRooms, false},
		{"Agents.LoopBreaker.MaxConsecutive", c.Agents.LoopBreaker.MaxConsecutive, 20},
		{"Agents.LoopBreaker.MaxPerMinute", c.Agents.LoopBreaker.MaxPerMinute, 30},
		{"ListenAddr()", c.ListenAddr(), "0.0.0.0:8008"},
		{"MediaDir()", c.MediaDir(), filepath.Join("data", "media")},
		{"UsesPostgres()", c.UsesPostgres(), false},
	}
	for _, tc := range checks {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %#v, want %#v", tc.got, tc.want)
			}
		})
	}

	t.Run("Load without file or env", func(t *testing.T) {
		for name, env := range map[string]func(string) (string, bool){
			"nil env":   nil,
			"empty env": envMap(nil),
		} {
			got, err := Load("", env)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if !reflect.DeepEqual(got, Default()) {
				t.Errorf("%s: Load = %+v, want %+v", name, got, Default())
			}
		}
	})

	t.Run("fresh copy", func(t *testing.T) {
		a := Default()
		a.AdminUsers = append(a.AdminUsers, "x")
		a.Port = 1
		if b := Default(); b.Port != 8008 || len(b.AdminUsers) != 0 {
			t.Errorf("Default() shares state between calls: %+v", b)
		}
	})
}

func TestExampleFileEqualsDefaults(t *testing.T) {
	got, err := Load(examplePath, envMap(nil))
	if err != nil {
		t.Fatalf("Load(%s): %v", examplePath, err)
	}
	if want := Default(); !reflect.DeepEqual(got, want) {
		t.Errorf("example file drifted from Default():\n got  %+v\n want %+v", got, want)
	}
}

func TestExampleFileDocumentsEverything(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	all := leafKeys(reflect.TypeFor[Config](), "")
	inFile := yamlKeys(t, data)

	t.Run("every key present", func(t *testing.T) {
		for _, k := range all {
			if !slices.Contains(inFile, k) {
				t.Errorf("key %q missing from %s", k, examplePath)
			}
		}
	})
	t.Run("every env var mentioned", func(t *testing.T) {
		for _, ev := range EnvVars {
			if !strings.Contains(string(data), "Env: "+ev.Name) && !strings.Contains(string(data), ev.Name+" (") {
				t.Errorf("environment variable %s not documented in %s", ev.Name, examplePath)
			}
		}
	})
	t.Run("env table consistent", func(t *testing.T) {
		seen := map[string]bool{}
		for _, ev := range EnvVars {
			if seen[ev.Name] {
				t.Errorf("duplicate env var %s", ev.Name)
			}
			seen[ev.Name] = true
			if !slices.Contains(all, ev.Key) {
				t.Errorf("env var %s maps to unknown key %q", ev.Name, ev.Key)
			}
			if ev.Help == "" || ev.apply == nil {
				t.Errorf("env var %s lacks Help or apply", ev.Name)
			}
		}
	})
}

// fullYAML sets every key to a non-default value.
const fullYAML = `
server_name: matrix.example.com:8448
bind_address: 127.0.0.1
port: 9000
public_baseurl: https://matrix.example.com/
log_level: DEBUG
admin_users: [alice, bob.admin]
database:
  path: /var/lib/agentspace/db.sqlite
  url: postgresql://agent:pw@db:5432/agentspace?sslmode=disable
registration:
  enabled: true
  shared_secret: s3cret
  allow_guests: true
rate_limit:
  enabled: false
  per_second: 2.5
  burst: 5
media:
  path: /srv/media
  max_upload_bytes: 1000
max_request_body_bytes: 65536
access_token_lifetime: 15m
bcrypt_cost: 4
max_long_polls_per_user: 3
turn:
  uris:
    - turn:turn.example.com:3478?transport=udp
    - turns:turn.example.com:5349?transport=tcp
  username: turnuser
  password: turnpass
  ttl: 90s
app_service_config_files:
  - /etc/agentspace/bridge.yaml
app_service_retry:
  min: 250ms
  max: 1m
agents:
  user_prefix: bot.
  observer_moderators: ["@alice:matrix.example.com:8448"]
  loop_breaker:
    observer_rooms: false
    other_rooms: true
    max_consecutive: 5
    max_per_minute: 0
`

func fullConfig() *Config {
	return &Config{
		ServerName:          "matrix.example.com:8448",
		BindAddress:         "127.0.0.1",
		Port:                9000,
		PublicBaseURL:       "https://matrix.example.com/",
		LogLevel:            "debug",
		AdminUsers:          []string{"alice", "bob.admin"},
		Database:            DatabaseConfig{Path: "/var/lib/agentspace/db.sqlite", URL: "postgresql://agent:pw@db:5432/agentspace?sslmode=disable"},
		Registration:        RegistrationConfig{Enabled: true, SharedSecret: "s3cret", AllowGuests: true},
		RateLimit:           RateLimitConfig{Enabled: false, PerSecond: 2.5, Burst: 5},
		Media:               MediaConfig{Path: "/srv/media", MaxUploadBytes: 1000},
		MaxRequestBodyBytes: 65536,
		AccessTokenLifetime: Duration{15 * time.Minute},
		BcryptCost:          4,
		MaxLongPollsPerUser: 3,
		TURN: TURNConfig{
			URIs:     []string{"turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349?transport=tcp"},
			Username: "turnuser",
			Password: "turnpass",
			TTL:      Duration{90 * time.Second},
		},
		AppServiceConfigFiles: []string{"/etc/agentspace/bridge.yaml"},
		AppServiceRetry:       RetryConfig{Min: Duration{250 * time.Millisecond}, Max: Duration{time.Minute}},
		Agents: AgentsConfig{UserPrefix: "bot.", ObserverModerators: []string{"@alice:matrix.example.com:8448"},
			LoopBreaker: LoopBreakerConfig{ObserverRooms: false, OtherRooms: true, MaxConsecutive: 5, MaxPerMinute: 0}},
	}
}

func TestLoadYAML(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want func() *Config
	}{
		{"every key overridden", fullYAML, fullConfig},
		{"partial file keeps other defaults", "port: 9001\ndatabase:\n  url: postgres://db/x\n", func() *Config {
			c := Default()
			c.Port = 9001
			c.Database.URL = "postgres://db/x"
			return c
		}},
		{"empty file", "", Default},
		{"only comments", "# nothing here\n", Default},
		{"null values keep defaults", "port:\nadmin_users:\nturn:\n", Default},
		{"port zero allowed", "port: 0\n", func() *Config { c := Default(); c.Port = 0; return c }},
		{"empty lists", "admin_users: []\nturn:\n  uris: []\n", Default},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Load(writeFile(t, tc.yaml), envMap(nil))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if want := tc.want(); !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestLoadFileErrors(t *testing.T) {
	t.Run("missing file", func(t *testing.T) {
		_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), nil)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("err = %v, want fs.ErrNotExist", err)
		}
		if !strings.Contains(err.Error(), "nope.yaml") {
			t.Errorf("error %q does not name the file", err)
		}
	})
	t.Run("syntax error names file", func(t *testing.T) {
		p := writeFile(t, "port: [1\n")
		_, err := Load(p, nil)
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Fatalf("err = %v, want it to name %s", err, p)
		}
	})
	t.Run("multiple documents", func(t *testing.T) {
		_, err := Load(writeFile(t, "port: 1\n---\nport: 2\n"), nil)
		if err == nil || !strings.Contains(err.Error(), "multiple YAML documents") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestUnknownYAMLKey(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"top level", "server_name: x\nport: 1\nfoo: 1\n", []string{`line 3: unknown configuration key "foo"`}},
		{"nested", "database:\n  path: x.db\n  pasword: y\n", []string{`line 3: unknown configuration key "database.pasword"`}},
		{"flow mapping", "rate_limit: {burst: 3, burst_size: 4}\n", []string{`line 1: unknown configuration key "rate_limit.burst_size"`}},
		{"several at once", "foo: 1\nturn:\n  secret: x\nbar: 2\n", []string{
			`line 1: unknown configuration key "foo"`,
			`line 3: unknown configuration key "turn.secret"`,
			`line 4: unknown configuration key "bar"`,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, tc.yaml)
			_, err := Load(p, nil)
			if err == nil {
				t.Fatal("Load succeeded, want error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "config file "+p+": ") {
				t.Errorf("error %q does not start with the file name", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestYAMLTypeErrorsNameKey(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"string for int", "port: abc\n", "line 1: port: "},
		{"nested", "registration:\n  enabled: maybe\n", "line 2: registration.enabled: "},
		{"bad duration", "access_token_lifetime: soon\n", `line 1: access_token_lifetime: invalid duration "soon"`},
		{"bare number duration", "turn:\n  ttl: 3600\n", `line 2: turn.ttl: invalid duration "3600"`},
		{"list for duration", "turn:\n  ttl: [1]\n", "line 2: turn.ttl: expected a duration"},
		{"map for list", "admin_users:\n  alice: true\n", "admin_users"},
		{"flow mapping", "turn: {username: u, ttl: soon}\n", `line 1: turn.ttl: invalid duration "soon"`},
		{"flow sequence", "admin_users: [alice, {x: 1}]\nport: [1]\n", "line 2: port: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeFile(t, tc.yaml), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestEnvOverrides(t *testing.T) {
	// Start from a file that sets every key, so each case proves that the
	// environment wins over YAML.
	tests := []struct {
		env   string
		value string
		want  func(c *Config)
	}{
		{"SERVER_NAME", "other.example.org", func(c *Config) { c.ServerName = "other.example.org" }},
		{"BIND_ADDRESS", "::", func(c *Config) { c.BindAddress = "::" }},
		{"PORT", "9100", func(c *Config) { c.Port = 9100 }},
		{"PORT", " 0 ", func(c *Config) { c.Port = 0 }},
		{"PUBLIC_BASEURL", "http://localhost:8008", func(c *Config) { c.PublicBaseURL = "http://localhost:8008" }},
		{"LOG_LEVEL", "Warn", func(c *Config) { c.LogLevel = "warn" }},
		{"ADMIN_USERS", "carol", func(c *Config) { c.AdminUsers = []string{"carol"} }},
		{"ADMIN_USERS", " , ", func(c *Config) { c.AdminUsers = nil }},
		{"DB_PATH", "/tmp/x.db", func(c *Config) { c.Database.Path = "/tmp/x.db" }},
		{"DATABASE_URL", "postgres://u@h/d", func(c *Config) { c.Database.URL = "postgres://u@h/d" }},
		{"ENABLE_REGISTRATION", "off", func(c *Config) { c.Registration.Enabled = false }},
		{"ENABLE_REGISTRATION", "NO", func(c *Config) { c.Registration.Enabled = false }},
		{"REGISTRATION_SHARED_SECRET", " other ", func(c *Config) { c.Registration.SharedSecret = " other " }},
		{"ALLOW_GUESTS", "0", func(c *Config) { c.Registration.AllowGuests = false }},
		{"RATE_LIMIT", "on", func(c *Config) { c.RateLimit.Enabled = true }},
		{"MEDIA_PATH", "/m", func(c *Config) { c.Media.Path = "/m" }},
		{"MAX_UPLOAD_BYTES", "123", func(c *Config) { c.Media.MaxUploadBytes = 123 }},
		{"MAX_REQUEST_BODY_BYTES", "2097152", func(c *Config) { c.MaxRequestBodyBytes = 2097152 }},
		{"ACCESS_TOKEN_LIFETIME", "2h30m", func(c *Config) { c.AccessTokenLifetime = Duration{150 * time.Minute} }},
		{"BCRYPT_COST", "10", func(c *Config) { c.BcryptCost = 10 }},
		{"MAX_LONG_POLLS_PER_USER", "0", func(c *Config) { c.MaxLongPollsPerUser = 0 }},
		{"APPSERVICE_REGISTRATIONS", "a.yaml, b.yaml,", func(c *Config) { c.AppServiceConfigFiles = []string{"a.yaml", "b.yaml"} }},
		{"SOME_UNRELATED_VAR", "whatever", func(c *Config) {}},
	}
	covered := map[string]bool{}
	path := writeFile(t, fullYAML)
	for _, tc := range tests {
		covered[tc.env] = true
		t.Run(tc.env+"="+tc.value, func(t *testing.T) {
			got, err := Load(path, envMap(map[string]string{tc.env: tc.value}))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := fullConfig()
			tc.want(want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
	for _, ev := range EnvVars {
		if !covered[ev.Name] {
			t.Errorf("no test case for environment variable %s", ev.Name)
		}
	}

	t.Run("empty value is unset", func(t *testing.T) {
		env := map[string]string{}
		for _, ev := range EnvVars {
			env[ev.Name] = ""
		}
		got, err := Load(path, envMap(env))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, fullConfig()) {
			t.Errorf("empty env vars changed the config: %+v", got)
		}
	})
}

func TestRateLimitEnv(t *testing.T) {
	tests := []struct {
		value       string
		wantEnabled bool
		wantPerSec  float64
	}{
		{"off", false, 10},
		{"OFF", false, 10},
		{"false", false, 10},
		{"0", false, 10},
		{"on", true, 10},
		{"true", true, 10},
		{"20/s", true, 20},
		{" 2.5/s ", true, 2.5},
	}
	for _, base := range []struct {
		name string
		path string
	}{
		{"defaults", ""},
		{"file disables", "rate_limit:\n  enabled: false\n"},
	} {
		for _, tc := range tests {
			t.Run(base.name+"/"+tc.value, func(t *testing.T) {
				path := ""
				if base.path != "" {
					path = writeFile(t, base.path)
				}
				c, err := Load(path, envMap(map[string]string{"RATE_LIMIT": tc.value}))
				if err != nil {
					t.Fatal(err)
				}
				if c.RateLimit.Enabled != tc.wantEnabled || c.RateLimit.PerSecond != tc.wantPerSec || c.RateLimit.Burst != 50 {
					t.Errorf("RateLimit = %+v, want enabled=%v per_second=%v burst=50", c.RateLimit, tc.wantEnabled, tc.wantPerSec)
				}
			})
		}
	}
}

func TestAdminUsers(t *testing.T) {
	tests := []struct {
		value string
		want  []string
	}{
		{"alice", []string{"alice"}},
		{" alice , ,bob.admin,, ", []string{"alice", "bob.admin"}},
		{"a_b=c-d/e+f.g,123", []string{"a_b=c-d/e+f.g", "123"}},
		{",", nil},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			c, err := Load("", envMap(map[string]string{"ADMIN_USERS": tc.value}))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.AdminUsers, tc.want) {
				t.Errorf("AdminUsers = %q, want %q", c.AdminUsers, tc.want)
			}
			for _, lp := range tc.want {
				if !c.IsAdminLocalpart(lp) {
					t.Errorf("IsAdminLocalpart(%q) = false", lp)
				}
			}
			for _, lp := range []string{"mallory", "", "ALICE", "@alice:localhost"} {
				if c.IsAdminLocalpart(lp) {
					t.Errorf("IsAdminLocalpart(%q) = true", lp)
				}
			}
		})
	}
	t.Run("invalid localparts", func(t *testing.T) {
		_, err := Load("", envMap(map[string]string{"ADMIN_USERS": "alice,Bob,@carol:localhost"}))
		if err == nil {
			t.Fatal("want error")
		}
		for _, w := range []string{`admin_users[1]: "Bob"`, `admin_users[2]: "@carol:localhost"`, "ADMIN_USERS"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not contain %q", err, w)
			}
		}
		if strings.Contains(err.Error(), "admin_users[0]") {
			t.Errorf("valid alice reported: %v", err)
		}
	})
}

func TestInvalidEnv(t *testing.T) {
	tests := []struct {
		env, value string
		want       []string
	}{
		{"PORT", "abc", []string{`environment variable PORT: invalid integer "abc"`}},
		{"PORT", "70000", []string{"port: must be between 0 and 65535, got 70000", "PORT"}},
		{"PORT", "99999999999999999999", []string{"PORT", "out of range"}},
		{"LOG_LEVEL", "loud", []string{`log_level: must be one of error, warn, info, debug; got "loud"`, "LOG_LEVEL"}},
		{"ENABLE_REGISTRATION", "maybe", []string{`environment variable ENABLE_REGISTRATION: invalid boolean "maybe"`}},
		{"ALLOW_GUESTS", "2", []string{"environment variable ALLOW_GUESTS"}},
		{"RATE_LIMIT", "fast", []string{`environment variable RATE_LIMIT: invalid value "fast"`}},
		{"RATE_LIMIT", "0/s", []string{"environment variable RATE_LIMIT"}},
		{"RATE_LIMIT", "-5/s", []string{"environment variable RATE_LIMIT"}},
		{"RATE_LIMIT", "x/s", []string{"environment variable RATE_LIMIT"}},
		{"MAX_UPLOAD_BYTES", "1k", []string{"environment variable MAX_UPLOAD_BYTES"}},
		{"MAX_UPLOAD_BYTES", "0", []string{"media.max_upload_bytes", "MAX_UPLOAD_BYTES"}},
		{"MAX_REQUEST_BODY_BYTES", "1024", []string{"max_request_body_bytes: must be at least 65536, got 1024", "MAX_REQUEST_BODY_BYTES"}},
		{"ACCESS_TOKEN_LIFETIME", "soon", []string{`environment variable ACCESS_TOKEN_LIFETIME: invalid duration "soon"`}},
		{"ACCESS_TOKEN_LIFETIME", "0s", []string{"access_token_lifetime", "ACCESS_TOKEN_LIFETIME"}},
		{"BCRYPT_COST", "high", []string{"environment variable BCRYPT_COST"}},
		{"BCRYPT_COST", "3", []string{"bcrypt_cost: must be between 4 and 31, got 3", "BCRYPT_COST"}},
		{"SERVER_NAME", "bad name", []string{"server_name", "SERVER_NAME"}},
		{"BIND_ADDRESS", "[::1]", []string{"bind_address", "BIND_ADDRESS"}},
		{"PUBLIC_BASEURL", "example.com", []string{"public_baseurl", "PUBLIC_BASEURL"}},
		{"DATABASE_URL", "mysql://u:pw@h/d", []string{`database.url: unsupported scheme "mysql"`, "DATABASE_URL"}},
		{"ADMIN_USERS", "Alice", []string{"admin_users[0]", "ADMIN_USERS"}},
	}
	for _, tc := range tests {
		t.Run(tc.env+"="+tc.value, func(t *testing.T) {
			_, err := Load("", envMap(map[string]string{tc.env: tc.value}))
			if err == nil {
				t.Fatal("Load succeeded, want error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestValidateInvalidValues(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *Config)
		want   string // exact single error message
	}{
		{"empty server name", func(c *Config) { c.ServerName = "" }, "server_name: must not be empty"},
		{"server name with scheme", func(c *Config) { c.ServerName = "https://example.com" }, `server_name: "https://example.com" is not a valid Matrix server name`},
		{"empty bind address", func(c *Config) { c.BindAddress = "" }, "bind_address: must not be empty"},
		{"bind address with port", func(c *Config) { c.BindAddress = "0.0.0.0:80" }, `bind_address: "0.0.0.0:80" is not an IP address or hostname`},
		{"negative port", func(c *Config) { c.Port = -1 }, "port: must be between 0 and 65535, got -1"},
		{"port too big", func(c *Config) { c.Port = 70000 }, "port: must be between 0 and 65535, got 70000"},
		{"relative base url", func(c *Config) { c.PublicBaseURL = "/matrix" }, "public_baseurl: "},
		{"ftp base url", func(c *Config) { c.PublicBaseURL = "ftp://example.com" }, "public_baseurl: "},
		{"base url without host", func(c *Config) { c.PublicBaseURL = "https://" }, "public_baseurl: "},
		{"base url with query", func(c *Config) { c.PublicBaseURL = "https://x.org/?a=b" }, "public_baseurl: "},
		{"log level", func(c *Config) { c.LogLevel = "trace" }, `log_level: must be one of error, warn, info, debug; got "trace"`},
		{"admin user", func(c *Config) { c.AdminUsers = []string{"ok", "Not OK"} }, `admin_users[1]: "Not OK" is not a valid Matrix localpart`},
		{"empty admin user", func(c *Config) { c.AdminUsers = []string{""} }, `admin_users[0]: "" is not a valid Matrix localpart`},
		{"no database", func(c *Config) { c.Database.Path = "" }, "database.path: must not be empty when database.url is not set"},
		{"database url scheme", func(c *Config) { c.Database.URL = "sqlite:///x.db" }, `database.url: unsupported scheme "sqlite"`},
		{"database url dsn", func(c *Config) { c.Database.URL = "host=db password=secret" }, "database.url: has no scheme"},
		{"per second zero", func(c *Config) { c.RateLimit.PerSecond = 0 }, "rate_limit.per_second: must be greater than 0, got 0"},
		{"per second negative", func(c *Config) { c.RateLimit.PerSecond = -1 }, "rate_limit.per_second: must be greater than 0, got -1"},
		{"burst", func(c *Config) { c.RateLimit.Burst = 0 }, "rate_limit.burst: must be at least 1, got 0"},
		{"upload size", func(c *Config) { c.Media.MaxUploadBytes = 0 }, "media.max_upload_bytes: must be greater than 0, got 0"},
		{"body size", func(c *Config) { c.MaxRequestBodyBytes = 65535 }, "max_request_body_bytes: must be at least 65536, got 65535"},
		{"token lifetime", func(c *Config) { c.AccessTokenLifetime = Duration{-time.Second} }, "access_token_lifetime: must be greater than 0, got -1s"},
		{"bcrypt low", func(c *Config) { c.BcryptCost = 3 }, "bcrypt_cost: must be between 4 and 31, got 3"},
		{"bcrypt high", func(c *Config) { c.BcryptCost = 32 }, "bcrypt_cost: must be between 4 and 31, got 32"},
		{"long polls negative", func(c *Config) { c.MaxLongPollsPerUser = -1 }, "max_long_polls_per_user: must be 0 (no cap) or more, got -1"},
		{"turn uri", func(c *Config) { c.TURN.URIs = []string{"turn:ok", "http://turn"} }, `turn.uris[1]: "http://turn" is not a TURN/STUN URI`},
		{"turn ttl", func(c *Config) { c.TURN.TTL = Duration{} }, "turn.ttl: must be greater than 0, got 0s"},
		{"app service file", func(c *Config) { c.AppServiceConfigFiles = []string{" "} }, "app_service_config_files[0]: must not be empty"},
		{"agent prefix", func(c *Config) { c.Agents.UserPrefix = "Agent " }, `agents.user_prefix: "Agent " is not a valid start`},
		{"empty agent prefix", func(c *Config) { c.Agents.UserPrefix = "" }, `agents.user_prefix: "" is not a valid start`},
		{"observer moderator", func(c *Config) { c.Agents.ObserverModerators = []string{"@ok:example.com", "alice"} }, `agents.observer_moderators[1]: "alice" is not a Matrix user ID`},
		{"loop breaker consecutive", func(c *Config) { c.Agents.LoopBreaker.MaxConsecutive = -1 }, "agents.loop_breaker.max_consecutive: must be 0 (no limit) or more, got -1"},
		{"loop breaker per minute", func(c *Config) { c.Agents.LoopBreaker.MaxPerMinute = -2 }, "agents.loop_breaker.max_per_minute: must be 0 (no limit) or more, got -2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mutate(c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate() = nil, want error")
			}
			if errs := joinedErrors(err); len(errs) != 1 {
				t.Errorf("got %d problems, want 1: %v", len(errs), err)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("error %q does not start with %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error leaks a secret: %q", err)
			}
		})
	}
}

func TestValidateServerName(t *testing.T) {
	valid := []string{"localhost", "example.com", "matrix.example.com:8448", "1.2.3.4", "1.2.3.4:1", "[::1]", "[2001:db8::1]:8448", "Example-1.COM", "a:65535"}
	invalid := []string{"", "bad name", "example.com:", "example.com:0", "example.com:65536", "example.com:123456", "example.com:http", "::1", "[::1", "[1.2.3.4]", "[::1]8448", "-a.com", "a..com", "a.com.", "@alice:example.com", "ex_ample.com", "exämple.com"}
	for _, s := range valid {
		t.Run("valid "+s, func(t *testing.T) {
			c := Default()
			c.ServerName = s
			if err := c.Validate(); err != nil {
				t.Errorf("Validate() = %v", err)
			}
		})
	}
	for _, s := range invalid {
		t.Run("invalid "+s, func(t *testing.T) {
			c := Default()
			c.ServerName = s
			if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "server_name: ") {
				t.Errorf("Validate() = %v, want server_name error", err)
			}
		})
	}
}

func TestMultipleProblemsReportedAtOnce(t *testing.T) {
	t.Run("Validate", func(t *testing.T) {
		c := Default()
		c.Port = 70000
		c.LogLevel = "loud"
		c.BcryptCost = 99
		c.RateLimit.Burst = 0
		err := c.Validate()
		want := []string{"port: ", "log_level: ", "bcrypt_cost: ", "rate_limit.burst: "}
		if errs := joinedErrors(err); len(errs) != len(want) {
			t.Fatalf("got %d problems, want %d: %v", len(errs), len(want), err)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not contain %q", err, w)
			}
		}
	})
	t.Run("Load from file and env", func(t *testing.T) {
		p := writeFile(t, "port: 70000\nturn:\n  ttl: 0s\n")
		_, err := Load(p, envMap(map[string]string{"PORT": "abc", "LOG_LEVEL": "loud", "ENABLE_REGISTRATION": "maybe"}))
		want := []string{
			"environment variable PORT",
			"environment variable ENABLE_REGISTRATION",
			"port: must be between 0 and 65535, got 70000",
			"log_level: ",
			"turn.ttl: ",
		}
		if errs := joinedErrors(err); len(errs) != len(want) {
			t.Fatalf("got %d problems, want %d: %v", len(errs), len(want), err)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not contain %q", err, w)
			}
		}
		if !strings.HasPrefix(err.Error(), "invalid configuration: ") {
			t.Errorf("error %q lacks context prefix", err)
		}
	})
}

func TestDatabaseURL(t *testing.T) {
	tests := []struct {
		url          string
		wantPostgres bool
		wantErr      string
	}{
		{"", false, ""},
		{"postgres://agent:pw@db:5432/agentspace", true, ""},
		{"postgresql://agent@db/agentspace?sslmode=require", true, ""},
		{"POSTGRES://db/x", true, ""},
		{"postgres:///agentspace?host=/var/run/postgresql", true, ""},
		{"mysql://agent:hunter2@db/agentspace", false, `database.url: unsupported scheme "mysql"`},
		{"sqlite:./x.db", false, `database.url: unsupported scheme "sqlite"`},
		{"host=db user=agent password=hunter2", false, "database.url: "},
		{"postgres://agent:hun%zz@db/x", false, "database.url: is not a valid URL"},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			c, err := Load("", envMap(map[string]string{"DATABASE_URL": tc.url}))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got := c.UsesPostgres(); got != tc.wantPostgres {
					t.Errorf("UsesPostgres() = %v, want %v", got, tc.wantPostgres)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "hun%zz") {
				t.Errorf("error leaks the password: %v", err)
			}
			c = Default()
			c.Database.URL = tc.url
			if c.UsesPostgres() {
				t.Errorf("UsesPostgres() = true for %q", tc.url)
			}
		})
	}
}

func TestRedacted(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(c *Config)
		check   func(t *testing.T, r Config)
		secrets []string
	}{
		{"all secrets", func(c *Config) {}, func(t *testing.T, r Config) {
			if r.Registration.SharedSecret != "REDACTED" || r.TURN.Password != "REDACTED" {
				t.Errorf("secrets not redacted: %+v", r)
			}
			if want := "postgresql://agent:REDACTED@db:5432/agentspace?sslmode=disable"; r.Database.URL != want {
				t.Errorf("Database.URL = %q, want %q", r.Database.URL, want)
			}
		}, []string{"s3cret", "turnpass", ":pw@"}},
		{"password in query", func(c *Config) { c.Database.URL = "postgres://db/x?password=hunter2&sslmode=disable" }, func(t *testing.T, r Config) {
			if want := "postgres://db/x?password=REDACTED&sslmode=disable"; r.Database.URL != want {
				t.Errorf("Database.URL = %q, want %q", r.Database.URL, want)
			}
		}, []string{"hunter2"}},
		{"no password", func(c *Config) { c.Database.URL = "postgres://agent@db/x" }, func(t *testing.T, r Config) {
			if r.Database.URL != "postgres://agent@db/x" {
				t.Errorf("Database.URL = %q, want unchanged", r.Database.URL)
			}
		}, nil},
		{"dsn hidden entirely", func(c *Config) { c.Database.URL = "host=db password=hunter2" }, func(t *testing.T, r Config) {
			if r.Database.URL != "REDACTED" {
				t.Errorf("Database.URL = %q", r.Database.URL)
			}
		}, []string{"hunter2"}},
		{"empty secrets stay empty", func(c *Config) {
			c.Registration.SharedSecret, c.TURN.Password, c.Database.URL = "", "", ""
		}, func(t *testing.T, r Config) {
			if r.Registration.SharedSecret != "" || r.TURN.Password != "" || r.Database.URL != "" {
				t.Errorf("empty secrets changed: %+v", r)
			}
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := fullConfig()
			tc.mutate(c)
			orig := *c
			orig.AdminUsers = slices.Clone(c.AdminUsers)
			r := c.Redacted()
			tc.check(t, r)
			// Non-secret fields are preserved, the original is untouched.
			if r.ServerName != c.ServerName || r.TURN.Username != c.TURN.Username || !reflect.DeepEqual(r.AdminUsers, c.AdminUsers) {
				t.Errorf("non-secret fields changed: %+v", r)
			}
			if !reflect.DeepEqual(*c, orig) {
				t.Errorf("Redacted modified the original")
			}
			out, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.secrets {
				if strings.Contains(string(out), s) {
					t.Errorf("redacted config %s leaks %q", out, s)
				}
			}
			// The copy does not alias the original's slices.
			if len(r.AdminUsers) > 0 {
				r.AdminUsers[0] = "changed"
				if c.AdminUsers[0] == "changed" {
					t.Error("Redacted shares AdminUsers with the original")
				}
			}
		})
	}
}

func TestListenAddrAndMediaDir(t *testing.T) {
	tests := []struct {
		name       string
		mutate     func(c *Config)
		wantListen string
		wantMedia  string
	}{
		{"defaults", func(c *Config) {}, "0.0.0.0:8008", filepath.Join("data", "media")},
		{"ipv6 random port", func(c *Config) { c.BindAddress = "::1"; c.Port = 0 }, "[::1]:0", filepath.Join("data", "media")},
		{"db elsewhere", func(c *Config) { c.Database.Path = "/var/lib/as/db.sqlite" }, "0.0.0.0:8008", filepath.Join("/var/lib/as", "media")},
		{"explicit media path", func(c *Config) { c.Media.Path = "/srv/media" }, "0.0.0.0:8008", "/srv/media"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mutate(c)
			if got := c.ListenAddr(); got != tc.wantListen {
				t.Errorf("ListenAddr() = %q, want %q", got, tc.wantListen)
			}
			if got := c.MediaDir(); got != tc.wantMedia {
				t.Errorf("MediaDir() = %q, want %q", got, tc.wantMedia)
			}
		})
	}
}

func TestDurationEncoding(t *testing.T) {
	d := Duration{90 * time.Second}
	y, err := yaml.Marshal(struct {
		D Duration `yaml:"d"`
	}{d})
	if err != nil || string(y) != "d: 1m30s\n" {
		t.Errorf("yaml.Marshal = %q, %v", y, err)
	}
	j, err := json.Marshal(d)
	if err != nil || string(j) != `"1m30s"` {
		t.Errorf("json.Marshal = %s, %v", j, err)
	}
	var back Duration
	if err := json.Unmarshal(j, &back); err != nil || back != d {
		t.Errorf("json round trip = %v, %v", back, err)
	}
	if err := back.UnmarshalText([]byte("soon")); err == nil {
		t.Error("UnmarshalText(soon) succeeded")
	}
}
