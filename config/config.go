// Package config loads, validates and describes the AgentSpace server
// configuration.
//
// Configuration is assembled in three layers, each overriding the previous:
//
//  1. built-in defaults (see [Default]),
//  2. an optional YAML file (see agentspace.example.yaml for every key),
//  3. environment variables (see [EnvVars]).
//
// [Load] performs all three steps and then calls [Config.Validate], which
// reports every problem at once, each naming the offending YAML key.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole server configuration. Precedence: defaults < YAML file < environment variables.
type Config struct {
	// ServerName is the Matrix server name (the part after the colon in
	// user IDs). Env SERVER_NAME, default "localhost".
	ServerName string `yaml:"server_name"`
	// BindAddress is the IP address or hostname the HTTP listener binds to.
	// Env BIND_ADDRESS, default "0.0.0.0".
	BindAddress string `yaml:"bind_address"`
	// Port is the TCP port of the HTTP listener; 0 picks a random free port
	// (used by tests). Env PORT, default 8008.
	Port int `yaml:"port"`
	// PublicBaseURL is the externally visible base URL of the server
	// (e.g. behind a reverse proxy). When set it must be an absolute http(s)
	// URL. Env PUBLIC_BASEURL, default "".
	PublicBaseURL string `yaml:"public_baseurl"`
	// LogLevel is one of error, warn, info or debug. Env LOG_LEVEL,
	// default "info".
	LogLevel string `yaml:"log_level"`
	// AdminUsers lists the localparts of server administrators. Each must be
	// a valid Matrix localpart ([a-z0-9._=\-/+]+). Env ADMIN_USERS
	// (comma-separated), default empty.
	AdminUsers []string `yaml:"admin_users"`
	// Database selects and configures the storage backend.
	Database DatabaseConfig `yaml:"database"`
	// Registration controls account registration.
	Registration RegistrationConfig `yaml:"registration"`
	// RateLimit controls request rate limiting.
	RateLimit RateLimitConfig `yaml:"rate_limit"`
	// Media configures the media repository.
	Media MediaConfig `yaml:"media"`
	// MaxRequestBodyBytes caps the size of request bodies (media uploads use
	// Media.MaxUploadBytes instead). Env MAX_REQUEST_BODY_BYTES, default
	// 1 MiB; must be >= 65536.
	MaxRequestBodyBytes int64 `yaml:"max_request_body_bytes"`
	// AccessTokenLifetime is the lifetime of access tokens issued together
	// with a refresh token (refresh_token: true). Env ACCESS_TOKEN_LIFETIME,
	// default 1h; must be > 0.
	AccessTokenLifetime Duration `yaml:"access_token_lifetime"`
	// BcryptCost is the bcrypt work factor for password hashes. Env
	// BCRYPT_COST, default 12; allowed 4..31.
	BcryptCost int `yaml:"bcrypt_cost"`
	// MaxLongPollsPerUser caps the /sync long-polls one user may have
	// waiting at once; more get 429 M_LIMIT_EXCEEDED. 0 disables the cap.
	// Env MAX_LONG_POLLS_PER_USER, default 10; must be >= 0.
	MaxLongPollsPerUser int `yaml:"max_long_polls_per_user"`
	// TURN configures the TURN servers advertised to VoIP clients.
	TURN TURNConfig `yaml:"turn"`
	// AppServiceConfigFiles lists application service registration files.
	// Env APPSERVICE_REGISTRATIONS (comma-separated paths), default empty.
	AppServiceConfigFiles []string `yaml:"app_service_config_files"`
	// AppServiceRetry bounds the exponential backoff between attempts to
	// deliver a transaction to an appservice that failed.
	AppServiceRetry RetryConfig `yaml:"app_service_retry"`
	// Agents configures the built-in agents appservice (OpenClaw agents),
	// observer rooms and the loop breaker.
	Agents AgentsConfig `yaml:"agents"`
	// Bridges forwards room messages to other systems (Slack, Discord, any
	// HTTP endpoint); see bridges.go. YAML only.
	Bridges BridgesConfig `yaml:"bridges"`
	// Hooks call local HTTP endpoints on room events (onMessageReceived,
	// onRoomCreated, onRoomDeleted); see bridges.go. YAML only.
	Hooks []HookConfig `yaml:"hooks"`
}

// AgentsConfig configures the built-in agents appservice, observer rooms
// and the loop breaker. These keys have no environment variables.
type AgentsConfig struct {
	// UserPrefix is the localpart prefix of agent bot users: OpenClaw agent
	// "alex" becomes @<prefix>alex:<server_name>. The built-in appservice
	// claims the exclusive namespace @<prefix>.*. Default "agent_".
	UserPrefix string `yaml:"user_prefix"`
	// ObserverModerators lists user IDs that get power level 50 (may post,
	// kick and redact) in every new observer room. Default empty.
	ObserverModerators []string `yaml:"observer_moderators"`
	// LoopBreaker limits bot messages in rooms with no human in between.
	LoopBreaker LoopBreakerConfig `yaml:"loop_breaker"`
}

// LoopBreakerConfig is the default loop-breaker budget of a room.
type LoopBreakerConfig struct {
	// ObserverRooms turns the loop breaker on in new observer rooms. Default true.
	ObserverRooms bool `yaml:"observer_rooms"`
	// OtherRooms turns it on in every other room without a setting of its
	// own. Default false.
	OtherRooms bool `yaml:"other_rooms"`
	// MaxConsecutive is how many bot messages in a row, with no human
	// message in between, a room accepts. 0 = no limit. Default 20.
	MaxConsecutive int `yaml:"max_consecutive"`
	// MaxPerMinute is how many bot messages per minute a room accepts.
	// 0 = no limit. Default 30.
	MaxPerMinute int `yaml:"max_per_minute"`
}

// RetryConfig bounds an exponential backoff.
type RetryConfig struct {
	// Min is the first delay. Default 1s; must be > 0.
	Min Duration `yaml:"min"`
	// Max caps the delay. Default 5m; must be >= min.
	Max Duration `yaml:"max"`
}

// DatabaseConfig selects the storage backend: SQLite at Path unless URL is
// set, in which case PostgreSQL is used.
type DatabaseConfig struct {
	// Path is the SQLite database file. Env DB_PATH, default
	// "./data/agentspace.db".
	Path string `yaml:"path"`
	// URL is a postgres:// or postgresql:// connection URL; when set,
	// PostgreSQL is used instead of SQLite. Env DATABASE_URL, default "".
	URL string `yaml:"url"`
}

// RegistrationConfig controls account registration.
type RegistrationConfig struct {
	// Enabled allows open registration of new users. Env
	// ENABLE_REGISTRATION, default false.
	Enabled bool `yaml:"enabled"`
	// SharedSecret enables shared-secret (admin) registration when
	// non-empty. Env REGISTRATION_SHARED_SECRET, default "".
	SharedSecret string `yaml:"shared_secret"`
	// AllowGuests allows guest access. Env ALLOW_GUESTS, default false.
	AllowGuests bool `yaml:"allow_guests"`
}

// RateLimitConfig controls the token-bucket rate limiter applied per user
// or per IP address to rate-limited endpoints.
type RateLimitConfig struct {
	// Enabled turns rate limiting on. Default true; env RATE_LIMIT
	// ("off"/"false"/"0" disables, "on"/"true" enables, "20/s" enables and
	// sets PerSecond).
	Enabled bool `yaml:"enabled"`
	// PerSecond is the sustained number of requests per second. Default 10;
	// must be > 0.
	PerSecond float64 `yaml:"per_second"`
	// Burst is the number of requests allowed in a burst. Default 50; must
	// be >= 1.
	Burst int `yaml:"burst"`
}

// MediaConfig configures the media repository.
type MediaConfig struct {
	// Path is the directory media is stored in. Env MEDIA_PATH; default ""
	// meaning "<directory of Database.Path>/media" (see Config.MediaDir).
	Path string `yaml:"path"`
	// MaxUploadBytes caps the size of a single upload. Env MAX_UPLOAD_BYTES,
	// default 50 MiB; must be > 0.
	MaxUploadBytes int64 `yaml:"max_upload_bytes"`
}

// TURNConfig configures the TURN servers returned by
// /_matrix/client/v3/voip/turnServer. It has no environment variables.
type TURNConfig struct {
	// URIs lists turn:, turns:, stun: or stuns: URIs. Default empty (no TURN).
	URIs []string `yaml:"uris"`
	// Username is the static TURN username handed to clients.
	Username string `yaml:"username"`
	// Password is the static TURN password handed to clients.
	Password string `yaml:"password"`
	// TTL is how long clients may cache the credentials. Default 24h; must
	// be > 0.
	TTL Duration `yaml:"ttl"`
}

// Duration is a time.Duration that reads from YAML/env as a Go duration string ("90s", "1h").
type Duration struct{ time.Duration }

// UnmarshalYAML implements yaml.Unmarshaler. It accepts a Go duration string
// such as "90s" or "1h" and reports errors with the line number.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf(
			"line %d: expected a duration string such as \"90s\" or \"1h\"", n.Line)}}
	}
	v, err := time.ParseDuration(strings.TrimSpace(n.Value))
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf(
			"line %d: invalid duration %q (expected a duration such as \"90s\" or \"1h\")", n.Line, n.Value)}}
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler, so a Duration is written
// as a duration string by both YAML and JSON encoders.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := parseDuration(string(text))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// Default values that are not obvious literals.
const (
	defaultDatabasePath        = "./data/agentspace.db"
	defaultMaxRequestBodyBytes = 1 << 20  // 1 MiB
	defaultMaxUploadBytes      = 50 << 20 // 50 MiB
	minMaxRequestBodyBytes     = 65536
	minBcryptCost              = 4
	maxBcryptCost              = 31
	redacted                   = "REDACTED"
)

// logLevels lists the accepted values of log_level.
var logLevels = []string{"error", "warn", "info", "debug"}

// localpartRE matches a valid Matrix user localpart.
var localpartRE = regexp.MustCompile(`^[a-z0-9._=\-/+]+$`)

// Default returns a new Config holding every default value.
func Default() *Config {
	return &Config{
		ServerName:          "localhost",
		BindAddress:         "0.0.0.0",
		Port:                8008,
		PublicBaseURL:       "",
		LogLevel:            "info",
		AdminUsers:          nil,
		Database:            DatabaseConfig{Path: defaultDatabasePath},
		Registration:        RegistrationConfig{},
		RateLimit:           RateLimitConfig{Enabled: true, PerSecond: 10, Burst: 50},
		Media:               MediaConfig{Path: "", MaxUploadBytes: defaultMaxUploadBytes},
		MaxRequestBodyBytes: defaultMaxRequestBodyBytes,
		AccessTokenLifetime: Duration{time.Hour},
		AppServiceRetry:     RetryConfig{Min: Duration{time.Second}, Max: Duration{5 * time.Minute}},
		BcryptCost:          12,
		MaxLongPollsPerUser: 10,
		TURN:                TURNConfig{TTL: Duration{24 * time.Hour}},
		Agents: AgentsConfig{UserPrefix: "agent_",
			LoopBreaker: LoopBreakerConfig{ObserverRooms: true, MaxConsecutive: 20, MaxPerMinute: 30}},
	}
}

// Load builds a Config from the defaults, the YAML file at path (skipped
// when path is "") and the environment, then validates it.
//
// env looks up an environment variable (pass os.LookupEnv); nil means an
// empty environment. Environment variables set to the empty string are
// treated as unset. Unknown YAML keys are errors; unknown environment
// variables are ignored. All environment and validation problems are
// reported together.
func Load(path string, env func(string) (string, bool)) (*Config, error) {
	c := Default()
	if path != "" {
		if err := c.loadFile(path); err != nil {
			return nil, err
		}
	}
	fromEnv, errs := c.applyEnv(env)
	c.normalize()
	for _, p := range c.problems() {
		if name, ok := fromEnv[p.key]; ok {
			p.msg += fmt.Sprintf(" (set by environment variable %s)", name)
		}
		errs = append(errs, p)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("invalid configuration: %w", errors.Join(errs...))
	}
	return c, nil
}

// loadFile decodes the YAML file at path on top of c.
func (c *Config) loadFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading config file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file or only comments
		}
		return fmt.Errorf("config file %s: %w", path, describeYAMLError(data, err))
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return fmt.Errorf("config file %s: %w", path, err)
	default:
		return fmt.Errorf("config file %s: multiple YAML documents are not supported", path)
	}
}

var (
	yamlLineRE         = regexp.MustCompile(`^line (\d+): (.*)$`)
	yamlUnknownFieldRE = regexp.MustCompile(`^field (.+) not found in type \S+$`)
)

// keyAt is a YAML key path found on some line of the file.
type keyAt struct {
	path  string // dotted path, e.g. "database.url" or "admin_users[1]"
	name  string // the key itself, e.g. "url"; "" for sequence items
	value string // the scalar value, "" for collections
}

// describeYAMLError rewrites yaml.v3 type errors so that each message names
// the YAML key it is about; other errors are returned unchanged.
func describeYAMLError(data []byte, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	keys := keysByLine(data)
	errs := make([]error, 0, len(te.Errors))
	for _, msg := range te.Errors {
		m := yamlLineRE.FindStringSubmatch(msg)
		if m == nil {
			errs = append(errs, errors.New(msg))
			continue
		}
		line, _ := strconv.Atoi(m[1])
		rest := m[2]
		if f := yamlUnknownFieldRE.FindStringSubmatch(rest); f != nil {
			path := f[1]
			for _, k := range keys[line] {
				if k.name == f[1] {
					path = k.path
				}
			}
			errs = append(errs, fmt.Errorf("line %d: unknown configuration key %q", line, path))
			continue
		}
		if ks := keys[line]; len(ks) > 0 {
			// Several keys can share a line (flow style); prefer the one
			// whose value the message quotes.
			path := ks[0].path
			for _, k := range ks {
				if k.value != "" && (strings.Contains(rest, "`"+k.value+"`") || strings.Contains(rest, strconv.Quote(k.value))) {
					path = k.path
					break
				}
			}
			errs = append(errs, fmt.Errorf("line %d: %s: %s", line, path, rest))
			continue
		}
		errs = append(errs, errors.New(msg))
	}
	return errors.Join(errs...)
}

// keysByLine maps line numbers of data to the YAML key paths on them.
func keysByLine(data []byte) map[int][]keyAt {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil
	}
	out := make(map[int][]keyAt)
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, ch := range n.Content {
				walk(ch, prefix)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if prefix != "" {
					p = prefix + "." + k.Value
				}
				entry := keyAt{path: p, name: k.Value}
				if v.Kind == yaml.ScalarNode {
					entry.value = v.Value
				}
				out[k.Line] = append(out[k.Line], entry)
				if v.Kind == yaml.ScalarNode && v.Line != k.Line {
					out[v.Line] = append(out[v.Line], entry)
				}
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, item := range n.Content {
				p := fmt.Sprintf("%s[%d]", prefix, i)
				if item.Kind == yaml.ScalarNode {
					out[item.Line] = append(out[item.Line], keyAt{path: p, value: item.Value})
				}
				walk(item, p)
			}
		}
	}
	walk(&doc, "")
	return out
}

// EnvVar describes one environment variable that overrides a YAML key.
type EnvVar struct {
	// Name is the environment variable name, e.g. "PORT".
	Name string
	// Key is the dotted YAML key it overrides, e.g. "database.url".
	Key string
	// Help is a one-line description for documentation.
	Help string
	// apply parses value and stores it in c.
	apply func(c *Config, value string) error
}

// EnvVars lists every environment variable understood by Load, in the
// order they are applied. It is a read-only table; do not modify it.
var EnvVars = []EnvVar{
	{Name: "SERVER_NAME", Key: "server_name", Help: "Matrix server name (hostname or IP, optional :port)",
		apply: func(c *Config, v string) error { c.ServerName = strings.TrimSpace(v); return nil }},
	{Name: "BIND_ADDRESS", Key: "bind_address", Help: "address the HTTP listener binds to",
		apply: func(c *Config, v string) error { c.BindAddress = strings.TrimSpace(v); return nil }},
	{Name: "PORT", Key: "port", Help: "TCP port of the HTTP listener (0 = random)",
		apply: func(c *Config, v string) error { return setInt(&c.Port, v) }},
	{Name: "PUBLIC_BASEURL", Key: "public_baseurl", Help: "externally visible http(s) base URL",
		apply: func(c *Config, v string) error { c.PublicBaseURL = strings.TrimSpace(v); return nil }},
	{Name: "LOG_LEVEL", Key: "log_level", Help: "error, warn, info or debug",
		apply: func(c *Config, v string) error { c.LogLevel = strings.TrimSpace(v); return nil }},
	{Name: "ADMIN_USERS", Key: "admin_users", Help: "comma-separated localparts of server admins",
		apply: func(c *Config, v string) error { c.AdminUsers = splitList(v); return nil }},
	{Name: "DB_PATH", Key: "database.path", Help: "SQLite database file",
		apply: func(c *Config, v string) error { c.Database.Path = strings.TrimSpace(v); return nil }},
	{Name: "DATABASE_URL", Key: "database.url", Help: "postgres:// URL; switches storage to PostgreSQL",
		apply: func(c *Config, v string) error { c.Database.URL = strings.TrimSpace(v); return nil }},
	{Name: "ENABLE_REGISTRATION", Key: "registration.enabled", Help: "allow open registration (true/false)",
		apply: func(c *Config, v string) error { return setBool(&c.Registration.Enabled, v) }},
	{Name: "REGISTRATION_SHARED_SECRET", Key: "registration.shared_secret", Help: "secret for shared-secret admin registration",
		apply: func(c *Config, v string) error { c.Registration.SharedSecret = v; return nil }},
	{Name: "ALLOW_GUESTS", Key: "registration.allow_guests", Help: "allow guest access (true/false)",
		apply: func(c *Config, v string) error { return setBool(&c.Registration.AllowGuests, v) }},
	{Name: "RATE_LIMIT", Key: "rate_limit.enabled", Help: `"off", "on" or a rate such as "20/s" (also sets rate_limit.per_second)`,
		apply: applyRateLimit},
	{Name: "MEDIA_PATH", Key: "media.path", Help: "media storage directory",
		apply: func(c *Config, v string) error { c.Media.Path = strings.TrimSpace(v); return nil }},
	{Name: "MAX_UPLOAD_BYTES", Key: "media.max_upload_bytes", Help: "maximum media upload size in bytes",
		apply: func(c *Config, v string) error { return setInt64(&c.Media.MaxUploadBytes, v) }},
	{Name: "MAX_REQUEST_BODY_BYTES", Key: "max_request_body_bytes", Help: "maximum request body size in bytes",
		apply: func(c *Config, v string) error { return setInt64(&c.MaxRequestBodyBytes, v) }},
	{Name: "ACCESS_TOKEN_LIFETIME", Key: "access_token_lifetime", Help: "lifetime of refreshable access tokens, e.g. 1h",
		apply: func(c *Config, v string) error { return setDuration(&c.AccessTokenLifetime, v) }},
	{Name: "BCRYPT_COST", Key: "bcrypt_cost", Help: "bcrypt work factor (4..31)",
		apply: func(c *Config, v string) error { return setInt(&c.BcryptCost, v) }},
	{Name: "MAX_LONG_POLLS_PER_USER", Key: "max_long_polls_per_user", Help: "concurrent /sync long-polls per user (0 = no cap)",
		apply: func(c *Config, v string) error { return setInt(&c.MaxLongPollsPerUser, v) }},
	{Name: "APPSERVICE_REGISTRATIONS", Key: "app_service_config_files", Help: "comma-separated application service registration files",
		apply: func(c *Config, v string) error { c.AppServiceConfigFiles = splitList(v); return nil }},
}

// applyEnv overlays environment variables onto c. It returns the YAML keys
// that were set from the environment (mapped to the variable name) and one
// error per unparsable variable.
func (c *Config) applyEnv(env func(string) (string, bool)) (map[string]string, []error) {
	fromEnv := make(map[string]string)
	if env == nil {
		return fromEnv, nil
	}
	var errs []error
	for _, ev := range EnvVars {
		v, ok := env(ev.Name)
		if !ok || v == "" {
			continue
		}
		if err := ev.apply(c, v); err != nil {
			errs = append(errs, fmt.Errorf("environment variable %s: %w", ev.Name, err))
			continue
		}
		fromEnv[ev.Key] = ev.Name
	}
	return fromEnv, errs
}

// applyRateLimit parses the RATE_LIMIT environment variable.
func applyRateLimit(c *Config, v string) error {
	s := strings.ToLower(strings.TrimSpace(v))
	if b, err := parseBool(s); err == nil {
		c.RateLimit.Enabled = b
		return nil
	}
	if num, ok := strings.CutSuffix(s, "/s"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err == nil && f > 0 && !math.IsInf(f, 0) {
			c.RateLimit.Enabled = true
			c.RateLimit.PerSecond = f
			return nil
		}
		return fmt.Errorf("invalid rate %q: must be a positive number of requests per second such as \"20/s\"", v)
	}
	return fmt.Errorf("invalid value %q (use \"off\", \"on\" or a rate such as \"20/s\")", v)
}

// normalize canonicalises values after loading so that equivalent
// configurations compare equal.
func (c *Config) normalize() {
	c.normalizeBridges()
	c.LogLevel = strings.ToLower(strings.TrimSpace(c.LogLevel))
	for _, s := range []*[]string{&c.AdminUsers, &c.TURN.URIs, &c.AppServiceConfigFiles, &c.Agents.ObserverModerators} {
		if len(*s) == 0 {
			*s = nil
		}
	}
}

// splitList splits a comma-separated list, trimming spaces and dropping
// empty elements.
func splitList(v string) []string {
	var out []string
	for _, part := range strings.Split(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// parseBool accepts true/false, 1/0, yes/no and on/off (case-insensitive).
func parseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "1", "yes", "on":
		return true, nil
	case "false", "0", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("invalid boolean %q (use true/false, 1/0, yes/no or on/off)", v)
}

func setBool(dst *bool, v string) error {
	b, err := parseBool(v)
	if err != nil {
		return err
	}
	*dst = b
	return nil
}

func setInt(dst *int, v string) error {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return fmt.Errorf("invalid integer %q: %w", v, numErrReason(err))
	}
	*dst = n
	return nil
}

func setInt64(dst *int64, v string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return fmt.Errorf("invalid integer %q: %w", v, numErrReason(err))
	}
	*dst = n
	return nil
}

func setDuration(dst *Duration, v string) error {
	d, err := parseDuration(v)
	if err != nil {
		return err
	}
	dst.Duration = d
	return nil
}

func parseDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (expected a duration such as \"90s\" or \"1h\"): %w", v, err)
	}
	return d, nil
}

// numErrReason strips the strconv function name and input from err,
// leaving e.g. strconv.ErrSyntax or strconv.ErrRange.
func numErrReason(err error) error {
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		return ne.Err
	}
	return err
}

// fieldError is one validation problem about one YAML key.
type fieldError struct {
	key  string // YAML key used to attribute the value to its source, e.g. "admin_users"
	path string // key as displayed, e.g. "admin_users[1]"
	msg  string
}

// Error implements error.
func (e *fieldError) Error() string { return e.path + ": " + e.msg }

// Validate checks every setting and reports all problems at once (joined
// with errors.Join), each message starting with the YAML key concerned,
// e.g. "port: must be between 0 and 65535, got 70000". It returns nil when
// the configuration is valid.
func (c *Config) Validate() error {
	ps := c.problems()
	errs := make([]error, len(ps))
	for i, p := range ps {
		errs[i] = p
	}
	return errors.Join(errs...)
}

// problems returns every validation problem of c.
func (c *Config) problems() []*fieldError {
	var ps []*fieldError
	add := func(key, format string, args ...any) {
		ps = append(ps, &fieldError{key: key, path: key, msg: fmt.Sprintf(format, args...)})
	}
	addItem := func(key string, i int, format string, args ...any) {
		ps = append(ps, &fieldError{key: key, path: fmt.Sprintf("%s[%d]", key, i), msg: fmt.Sprintf(format, args...)})
	}

	switch {
	case c.ServerName == "":
		add("server_name", "must not be empty")
	case !validServerName(c.ServerName):
		add("server_name", "%q is not a valid Matrix server name (expected a hostname, IPv4 address or [IPv6] address, optionally followed by :port)", c.ServerName)
	}

	switch {
	case c.BindAddress == "":
		add("bind_address", "must not be empty (use 0.0.0.0 or :: to listen on all interfaces)")
	case strings.HasPrefix(c.BindAddress, "["):
		add("bind_address", "%q: write IPv6 addresses without brackets", c.BindAddress)
	case !validBindAddress(c.BindAddress):
		add("bind_address", "%q is not an IP address or hostname", c.BindAddress)
	}

	if c.Port < 0 || c.Port > 65535 {
		add("port", "must be between 0 and 65535, got %d", c.Port)
	}

	if c.PublicBaseURL != "" {
		if msg := checkBaseURL(c.PublicBaseURL); msg != "" {
			add("public_baseurl", "%s", msg)
		}
	}

	if !slices.Contains(logLevels, c.LogLevel) {
		add("log_level", "must be one of %s; got %q", strings.Join(logLevels, ", "), c.LogLevel)
	}

	for i, lp := range c.AdminUsers {
		if !localpartRE.MatchString(lp) {
			addItem("admin_users", i, "%q is not a valid Matrix localpart (a user ID's part between @ and :, allowed characters a-z 0-9 . _ = - / +)", lp)
		}
	}

	if c.Database.URL == "" && c.Database.Path == "" {
		add("database.path", "must not be empty when database.url is not set")
	}
	if c.Database.URL != "" {
		if msg := checkDatabaseURL(c.Database.URL); msg != "" {
			add("database.url", "%s", msg)
		}
	}

	switch rl := c.RateLimit; {
	case math.IsNaN(rl.PerSecond) || math.IsInf(rl.PerSecond, 0):
		add("rate_limit.per_second", "must be a finite number, got %v", rl.PerSecond)
	case rl.PerSecond <= 0:
		add("rate_limit.per_second", "must be greater than 0, got %v", rl.PerSecond)
	}
	if c.RateLimit.Burst < 1 {
		add("rate_limit.burst", "must be at least 1, got %d", c.RateLimit.Burst)
	}

	if c.Media.MaxUploadBytes <= 0 {
		add("media.max_upload_bytes", "must be greater than 0, got %d", c.Media.MaxUploadBytes)
	}
	if c.MaxRequestBodyBytes < minMaxRequestBodyBytes {
		add("max_request_body_bytes", "must be at least %d, got %d", minMaxRequestBodyBytes, c.MaxRequestBodyBytes)
	}
	if c.AccessTokenLifetime.Duration <= 0 {
		add("access_token_lifetime", "must be greater than 0, got %s", c.AccessTokenLifetime)
	}
	if c.BcryptCost < minBcryptCost || c.BcryptCost > maxBcryptCost {
		add("bcrypt_cost", "must be between %d and %d, got %d", minBcryptCost, maxBcryptCost, c.BcryptCost)
	}
	if c.MaxLongPollsPerUser < 0 {
		add("max_long_polls_per_user", "must be 0 (no cap) or more, got %d", c.MaxLongPollsPerUser)
	}

	for i, u := range c.TURN.URIs {
		scheme, rest, ok := strings.Cut(u, ":")
		if !ok || rest == "" || !slices.Contains([]string{"turn", "turns", "stun", "stuns"}, strings.ToLower(scheme)) {
			addItem("turn.uris", i, "%q is not a TURN/STUN URI (expected e.g. \"turn:turn.example.com:3478?transport=udp\")", u)
		}
	}
	if c.TURN.TTL.Duration <= 0 {
		add("turn.ttl", "must be greater than 0, got %s", c.TURN.TTL)
	}

	for i, f := range c.AppServiceConfigFiles {
		if strings.TrimSpace(f) == "" {
			addItem("app_service_config_files", i, "must not be empty")
		}
	}
	if c.AppServiceRetry.Min.Duration <= 0 {
		add("app_service_retry.min", "must be greater than 0, got %s", c.AppServiceRetry.Min)
	}
	if c.AppServiceRetry.Max.Duration < c.AppServiceRetry.Min.Duration {
		add("app_service_retry.max", "must be at least app_service_retry.min (%s), got %s", c.AppServiceRetry.Min, c.AppServiceRetry.Max)
	}
	if !localpartRE.MatchString(c.Agents.UserPrefix) {
		add("agents.user_prefix", "%q is not a valid start of a Matrix localpart (allowed characters a-z 0-9 . _ = - / +)", c.Agents.UserPrefix)
	}
	for i, u := range c.Agents.ObserverModerators {
		if local, server, ok := strings.Cut(strings.TrimPrefix(u, "@"), ":"); !strings.HasPrefix(u, "@") || !ok || !localpartRE.MatchString(local) || !validServerName(server) {
			addItem("agents.observer_moderators", i, "%q is not a Matrix user ID (@localpart:server)", u)
		}
	}
	if c.Agents.LoopBreaker.MaxConsecutive < 0 {
		add("agents.loop_breaker.max_consecutive", "must be 0 (no limit) or more, got %d", c.Agents.LoopBreaker.MaxConsecutive)
	}
	if c.Agents.LoopBreaker.MaxPerMinute < 0 {
		add("agents.loop_breaker.max_per_minute", "must be 0 (no limit) or more, got %d", c.Agents.LoopBreaker.MaxPerMinute)
	}
	ps = append(ps, c.bridgeProblems()...)
	return ps
}

// validServerName reports whether s is a Matrix server name:
// hostname [":" port], where hostname is an IPv4 address, a bracketed IPv6
// address or a DNS name.
func validServerName(s string) bool {
	host, port, hasPort := s, "", false
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return false
		}
		addr, err := netip.ParseAddr(s[1:end])
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return false
		}
		rest := s[end+1:]
		if rest == "" {
			return true
		}
		port, hasPort = strings.CutPrefix(rest, ":")
		return hasPort && validPort(port)
	}
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, port = s[:i], s[i+1:]
		if !validPort(port) {
			return false
		}
	}
	return validDNSName(host)
}

// validPort reports whether s is a decimal port number 1..65535 of at most
// five digits.
func validPort(s string) bool {
	if len(s) == 0 || len(s) > 5 {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	n, _ := strconv.Atoi(s)
	return n >= 1 && n <= 65535
}

// validDNSName reports whether s is a DNS name (or IPv4 address) made of
// non-empty dot-separated labels of letters, digits and inner hyphens.
func validDNSName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// validBindAddress reports whether s is an IP address (without brackets)
// or a hostname.
func validBindAddress(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	return validDNSName(s)
}

// checkBaseURL returns why s is not an absolute http(s) URL, or "".
func checkBaseURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Sprintf("%q is not a valid URL", s)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Sprintf("%q must be an absolute http:// or https:// URL", s)
	}
	if u.Host == "" {
		return fmt.Sprintf("%q has no host", s)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Sprintf("%q must not contain a query or fragment", s)
	}
	return ""
}

// checkDatabaseURL returns why s is not a PostgreSQL URL, or "". The
// message never includes s itself, which may contain a password.
func checkDatabaseURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "is not a valid URL (expected postgres://user:password@host:port/dbname)"
	}
	if !isPostgresScheme(u.Scheme) {
		if u.Scheme == "" {
			return "has no scheme (expected postgres://user:password@host:port/dbname)"
		}
		return fmt.Sprintf("unsupported scheme %q (only postgres:// and postgresql:// URLs are supported)", u.Scheme)
	}
	return ""
}

func isPostgresScheme(scheme string) bool {
	scheme = strings.ToLower(scheme)
	return scheme == "postgres" || scheme == "postgresql"
}

// ListenAddr returns the address for net.Listen, e.g. "0.0.0.0:8008".
func (c *Config) ListenAddr() string {
	return net.JoinHostPort(c.BindAddress, strconv.Itoa(c.Port))
}

// MediaDir returns the media storage directory: Media.Path, or a "media"
// directory next to the SQLite database file when Media.Path is empty.
func (c *Config) MediaDir() string {
	if c.Media.Path != "" {
		return c.Media.Path
	}
	return filepath.Join(filepath.Dir(c.Database.Path), "media")
}

// IsAdminLocalpart reports whether localpart is listed in AdminUsers.
func (c *Config) IsAdminLocalpart(localpart string) bool {
	return slices.Contains(c.AdminUsers, localpart)
}

// UsesPostgres reports whether Database.URL selects PostgreSQL (a
// postgres:// or postgresql:// URL) rather than SQLite.
func (c *Config) UsesPostgres() bool {
	if c.Database.URL == "" {
		return false
	}
	u, err := url.Parse(c.Database.URL)
	return err == nil && isPostgresScheme(u.Scheme)
}

// Redacted returns a deep copy of c that is safe to log: the registration
// shared secret, the TURN password and the password in the database URL
// (user info or "password" query parameter) are replaced by "REDACTED".
// Empty secrets stay empty so logs still show that they are unset.
func (c *Config) Redacted() Config {
	r := *c
	r.AdminUsers = slices.Clone(c.AdminUsers)
	r.TURN.URIs = slices.Clone(c.TURN.URIs)
	r.AppServiceConfigFiles = slices.Clone(c.AppServiceConfigFiles)
	if r.Registration.SharedSecret != "" {
		r.Registration.SharedSecret = redacted
	}
	if r.TURN.Password != "" {
		r.TURN.Password = redacted
	}
	r.Database.URL = redactURL(c.Database.URL)
	r.Bridges, r.Hooks = c.redactedBridges()
	return r
}

// redactURL hides the password of a connection URL. An unparsable URL is
// replaced entirely, since it may still contain a password.
func redactURL(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return redacted // possibly a key=value DSN; hide it all
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), redacted)
		}
	}
	if u.RawQuery != "" {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			return redacted
		}
		changed := false
		for k := range q {
			if strings.Contains(strings.ToLower(k), "password") {
				q[k] = []string{redacted}
				changed = true
			}
		}
		if changed {
			u.RawQuery = q.Encode()
		}
	}
	return u.String()
}
