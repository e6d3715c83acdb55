package config

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// BridgesConfig configures forwarding of room messages to other systems.
type BridgesConfig struct {
	// Webhooks forward the messages of some rooms to Slack, Discord or any
	// HTTP endpoint. Default empty.
	Webhooks []WebhookConfig `yaml:"webhooks"`
}

// Webhook kinds (WebhookConfig.Kind).
const (
	WebhookSlack   = "slack"   // Slack incoming webhook: {"text"}
	WebhookDiscord = "discord" // Discord webhook: {"content", "username"}
	WebhookHTTP    = "http"    // generic signed JSON envelope
)

// WebhookConfig is one outbound forwarding target.
type WebhookConfig struct {
	// Name identifies the webhook (its delivery cursor, metrics and
	// `agentspace bridges status`); [a-z0-9._-]+, unique.
	Name string `yaml:"name"`
	// Rooms lists the room ids (!…) or aliases (#…) whose messages are
	// forwarded; at least one.
	Rooms []string `yaml:"rooms"`
	// Kind is slack, discord or http.
	Kind string `yaml:"kind"`
	// URL is where messages are POSTed. It is a secret (Slack and Discord
	// webhook URLs carry their token) and is never logged in full.
	URL string `yaml:"url"`
	// Secret signs each body (X-AgentSpace-Signature: sha256=<hex HMAC>);
	// required for kind http, optional otherwise.
	Secret string `yaml:"secret"`
}

// Hook events (HookConfig.On), the extension points of the original design.
const (
	HookMessageReceived = "onMessageReceived"
	HookRoomCreated     = "onRoomCreated"
	HookRoomDeleted     = "onRoomDeleted"
)

// HookEvents lists the accepted values of HookConfig.On.
var HookEvents = []string{HookMessageReceived, HookRoomCreated, HookRoomDeleted}

// HookConfig maps one kind of room event to an HTTP endpoint that receives
// a signed JSON POST for each, with the same delivery guarantees as
// webhooks.
type HookConfig struct {
	// Name identifies the hook; [a-z0-9._-]+, unique among hooks.
	Name string `yaml:"name"`
	// On is onMessageReceived, onRoomCreated or onRoomDeleted.
	On string `yaml:"on"`
	// URL receives the POSTs; never logged in full.
	URL string `yaml:"url"`
	// Secret signs each body (X-AgentSpace-Signature); required.
	Secret string `yaml:"secret"`
	// Rooms optionally restricts the hook to these room ids or aliases
	// (empty: every room).
	Rooms []string `yaml:"rooms"`
}

// bridgeNameRE matches webhook and hook names.
var bridgeNameRE = regexp.MustCompile(`^[a-z0-9._-]{1,64}$`)

func (c *Config) normalizeBridges() {
	if len(c.Bridges.Webhooks) == 0 {
		c.Bridges.Webhooks = nil
	}
	if len(c.Hooks) == 0 {
		c.Hooks = nil
	}
	for i := range c.Bridges.Webhooks {
		c.Bridges.Webhooks[i].Kind = strings.ToLower(strings.TrimSpace(c.Bridges.Webhooks[i].Kind))
	}
}

// bridgeProblems validates bridges.webhooks and hooks. Messages never
// quote a URL or a secret.
func (c *Config) bridgeProblems() []*fieldError {
	var ps []*fieldError
	add := func(key string, i int, field, format string, args ...any) {
		ps = append(ps, &fieldError{key: key, path: fmt.Sprintf("%s[%d].%s", key, i, field), msg: fmt.Sprintf(format, args...)})
	}
	names := map[string]bool{}
	for i, w := range c.Bridges.Webhooks {
		const key = "bridges.webhooks"
		switch {
		case !bridgeNameRE.MatchString(w.Name):
			add(key, i, "name", "%q must be 1-64 characters of a-z 0-9 . _ -", w.Name)
		case names[w.Name]:
			add(key, i, "name", "%q is used by another webhook", w.Name)
		}
		names[w.Name] = true
		if len(w.Rooms) == 0 {
			add(key, i, "rooms", "must list at least one room id (!…) or alias (#…)")
		}
		for j, r := range w.Rooms {
			if msg := checkRoomRef(r); msg != "" {
				add(key, i, fmt.Sprintf("rooms[%d]", j), "%s", msg)
			}
		}
		if !slices.Contains([]string{WebhookSlack, WebhookDiscord, WebhookHTTP}, w.Kind) {
			add(key, i, "kind", "must be slack, discord or http; got %q", w.Kind)
		}
		if msg := checkHookURL(w.URL); msg != "" {
			add(key, i, "url", "%s", msg)
		}
		if w.Kind == WebhookHTTP && w.Secret == "" {
			add(key, i, "secret", "is required for kind http (it signs every request)")
		}
	}
	names = map[string]bool{}
	for i, h := range c.Hooks {
		const key = "hooks"
		switch {
		case !bridgeNameRE.MatchString(h.Name):
			add(key, i, "name", "%q must be 1-64 characters of a-z 0-9 . _ -", h.Name)
		case names[h.Name]:
			add(key, i, "name", "%q is used by another hook", h.Name)
		}
		names[h.Name] = true
		if !slices.Contains(HookEvents, h.On) {
			add(key, i, "on", "must be one of %s; got %q", strings.Join(HookEvents, ", "), h.On)
		}
		if msg := checkHookURL(h.URL); msg != "" {
			add(key, i, "url", "%s", msg)
		}
		if h.Secret == "" {
			add(key, i, "secret", "is required (it signs every request)")
		}
		for j, r := range h.Rooms {
			if msg := checkRoomRef(r); msg != "" {
				add(key, i, fmt.Sprintf("rooms[%d]", j), "%s", msg)
			}
		}
	}
	return ps
}

// checkRoomRef returns why s is not a room id or alias, or "".
func checkRoomRef(s string) string {
	if (!strings.HasPrefix(s, "!") && !strings.HasPrefix(s, "#")) || len(s) < 2 || strings.ContainsAny(s, " \t\r\n") {
		return fmt.Sprintf("%q is not a room id (!…) or alias (#…:server)", s)
	}
	if strings.HasPrefix(s, "#") && !strings.Contains(s, ":") {
		return fmt.Sprintf("alias %q needs its server name (#name:server)", s)
	}
	return ""
}

// checkHookURL returns why s is not an absolute http(s) URL, or "". The
// message never includes s: webhook URLs carry credentials.
func checkHookURL(s string) string {
	if s == "" {
		return "is required"
	}
	u, err := url.Parse(s)
	if err != nil {
		return "is not a valid URL"
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "must be an absolute http:// or https:// URL"
	}
	if u.Host == "" {
		return "has no host"
	}
	return ""
}

// RedactURL shows where a webhook URL points without its credentials:
// scheme and host, with any path, query or user info replaced by
// "/REDACTED". Use it wherever a webhook or hook URL is logged or shown.
func RedactURL(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return redacted
	}
	out := u.Scheme + "://" + u.Host
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil || u.Fragment != "" {
		out += "/" + redacted
	}
	return out
}

// redactedBridges returns copies of the webhooks and hooks with URLs and
// secrets redacted.
func (c *Config) redactedBridges() (BridgesConfig, []HookConfig) {
	var b BridgesConfig
	for _, w := range c.Bridges.Webhooks {
		w.Rooms = slices.Clone(w.Rooms)
		w.URL = RedactURL(w.URL)
		if w.Secret != "" {
			w.Secret = redacted
		}
		b.Webhooks = append(b.Webhooks, w)
	}
	var hooks []HookConfig
	for _, h := range c.Hooks {
		h.Rooms = slices.Clone(h.Rooms)
		h.URL = RedactURL(h.URL)
		if h.Secret != "" {
			h.Secret = redacted
		}
		hooks = append(hooks, h)
	}
	return b, hooks
}
