// Package openclaw connects OpenClaw agents to AgentSpace: it reads an
// OpenClaw configuration (JSON5), provisions one Matrix bot user per agent
// through AgentSpace's built-in agents appservice, creates the observer
// rooms they talk in, writes the Matrix channel section OpenClaw's
// @openclaw/matrix plugin needs, and explains OpenClaw's routing of room
// messages to agents (bindings) before the gateway is started.
//
// OpenClaw's rules followed here (openclaw 2026.9.x, src/routing/resolve-route.ts):
// agents come from agents.entries (keyed by id) or the legacy agents.list[];
// agent and account ids are normalised to [a-z0-9_-]{1,64}; a binding
// without match.accountId applies to the channel's "default" account only,
// "*" to every account; the most specific binding wins (peer > guild >
// team > account > channel), the first in file order within a tier, and
// without a match the default agent (the one marked default: true, or the
// only agent) answers.
package openclaw

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/titanous/json5"
)

// Config is a decoded OpenClaw configuration file.
type Config struct {
	// Path is the file it was read from ("" when parsed from memory).
	Path string
	// Raw is the whole document as generic JSON values (numbers as
	// json.Number), the base for merging.
	Raw map[string]any
	// Agents in file order (entries are in the order of the JSON5 text).
	Agents []Agent
	// AgentsFormat is "entries", "list" or "" (no roster: the implicit
	// single agent "main").
	AgentsFormat string
	// Bindings are the route bindings (type "route" or none), file order.
	Bindings []Binding
	// HasComments reports JSON5 comments, which a rewrite drops.
	HasComments bool
}

// Agent is one configured agent.
type Agent struct {
	// ID is the normalised agent id (what bindings and accounts use).
	ID string
	// Name is its display name: name, else identity.name, else the id.
	Name string
	// Default marks agents.entries.<id>.default / agents.list[].default.
	Default bool
}

// Binding is one route binding.
type Binding struct {
	// Index is the binding's position in the bindings array.
	Index   int
	AgentID string
	Match   Match
}

// Match is a binding's match block.
type Match struct {
	Channel string
	// AccountPattern is match.accountId as written ("" = default account only, "*" = any).
	AccountPattern string
	Peer           *Peer
	GuildID        string
	TeamID         string
	Roles          []string
}

// Peer is a conversation a binding targets.
type Peer struct {
	Kind string // direct, group or channel ("dm" is read as direct)
	ID   string // "*" matches every peer of the kind
}

// DefaultAccountID is OpenClaw's name for a channel's implicit account.
const DefaultAccountID = "default"

var (
	validIDRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	invalidIDRE = regexp.MustCompile(`[^a-z0-9_-]+`)
)

// NormalizeID normalises an agent or account id as OpenClaw does: lower
// case, runs of other characters become "-", no leading or trailing "-",
// at most 64 characters. ok is false when nothing is left.
func NormalizeID(raw string) (id string, ok bool) {
	s := strings.ToLower(strings.TrimSpace(raw))
	if validIDRE.MatchString(s) {
		return s, true
	}
	s = invalidIDRE.ReplaceAllString(s, "-")
	s = strings.Trim(s, "-")
	if len(s) > 64 {
		s = s[:64]
	}
	return s, s != ""
}

// NormalizeAccountID is NormalizeID with OpenClaw's fallback: empty or
// unusable means the default account.
func NormalizeAccountID(raw string) string {
	if id, ok := NormalizeID(raw); ok {
		return id
	}
	return DefaultAccountID
}

// normalizeChatType maps peer kinds as OpenClaw does ("dm" → "direct").
func normalizeChatType(raw string) string {
	switch v := strings.ToLower(strings.TrimSpace(raw)); v {
	case "direct", "dm":
		return "direct"
	case "group", "channel":
		return v
	}
	return ""
}

// Load reads and decodes an OpenClaw configuration file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cfg.Path = path
	return cfg, nil
}

// Parse decodes an OpenClaw configuration from JSON5 text.
func Parse(data []byte) (*Config, error) {
	raw, err := decodeJSON5(data)
	if err != nil {
		return nil, err
	}
	cfg := &Config{Raw: raw, HasComments: hasJSON5Comments(data)}
	if err := cfg.readAgents(data); err != nil {
		return nil, err
	}
	cfg.readBindings()
	return cfg, nil
}

// decodeJSON5 decodes a JSON5 object into generic values, with numbers as
// json.Number so that a rewrite keeps them exactly.
func decodeJSON5(data []byte) (map[string]any, error) {
	dec := json5.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("invalid JSON5: %w", err)
	}
	obj, ok := normalizeNumbers(v).(map[string]any)
	if !ok {
		return nil, fmt.Errorf("invalid configuration: the top level must be an object")
	}
	return obj, nil
}

// normalizeNumbers turns json5.Number into json.Number (hexadecimal and
// other JSON5-only spellings become their decimal value).
func normalizeNumbers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = normalizeNumbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = normalizeNumbers(e)
		}
	case json5.Number:
		s := string(x)
		if json.Valid([]byte(s)) {
			return json.Number(s)
		}
		if n, err := x.Int64(); err == nil {
			return json.Number(fmt.Sprint(n))
		}
		if f, err := x.Float64(); err == nil {
			return f // NaN and ±Infinity cannot be written as JSON; json.Marshal reports them
		}
		return s
	}
	return v
}

// readAgents reads agents.entries (keyed, current) or agents.list (legacy).
// JSON5 objects decode into Go maps, so the order of entries is taken from
// the text itself.
func (cfg *Config) readAgents(data []byte) error {
	agents, _ := cfg.Raw["agents"].(map[string]any)
	if agents == nil {
		return nil
	}
	seen := map[string]bool{}
	add := func(rawID string, entry map[string]any) error {
		id, ok := NormalizeID(rawID)
		if !ok {
			return fmt.Errorf("agent id %q cannot be used (OpenClaw ids are letters, digits, _ and -)", rawID)
		}
		if seen[id] {
			return fmt.Errorf("agent id %q appears twice (after normalising to %q)", rawID, id)
		}
		seen[id] = true
		a := Agent{ID: id, Name: strings.TrimSpace(rawID)}
		if n, _ := entry["name"].(string); strings.TrimSpace(n) != "" {
			a.Name = strings.TrimSpace(n)
		} else if ident, _ := entry["identity"].(map[string]any); ident != nil {
			if n, _ := ident["name"].(string); strings.TrimSpace(n) != "" {
				a.Name = strings.TrimSpace(n)
			}
		}
		a.Default, _ = entry["default"].(bool)
		cfg.Agents = append(cfg.Agents, a)
		return nil
	}
	if entries, ok := agents["entries"]; ok && entries != nil {
		m, ok := entries.(map[string]any)
		if !ok {
			return fmt.Errorf("agents.entries must be an object keyed by agent id")
		}
		cfg.AgentsFormat = "entries"
		for _, k := range orderedKeys(data, []string{"agents", "entries"}, m) {
			entry, _ := m[k].(map[string]any)
			if entry == nil {
				continue // OpenClaw skips entries that are not objects
			}
			if err := add(k, entry); err != nil {
				return fmt.Errorf("agents.entries: %w", err)
			}
		}
		return nil
	}
	if list, ok := agents["list"]; ok && list != nil {
		l, ok := list.([]any)
		if !ok {
			return fmt.Errorf("agents.list must be an array")
		}
		cfg.AgentsFormat = "list"
		for i, e := range l {
			entry, _ := e.(map[string]any)
			if entry == nil {
				continue
			}
			id, _ := entry["id"].(string)
			if strings.TrimSpace(id) == "" {
				return fmt.Errorf("agents.list[%d]: id is required", i)
			}
			if err := add(id, entry); err != nil {
				return fmt.Errorf("agents.list[%d]: %w", i, err)
			}
		}
	}
	return nil
}

// readBindings reads the route bindings (ACP bindings are not routes).
func (cfg *Config) readBindings() {
	list, _ := cfg.Raw["bindings"].([]any)
	for i, e := range list {
		b, _ := e.(map[string]any)
		if b == nil {
			continue
		}
		if t, _ := b["type"].(string); t != "" && strings.ToLower(strings.TrimSpace(t)) != "route" {
			continue
		}
		m, _ := b["match"].(map[string]any)
		if m == nil {
			continue
		}
		channel, _ := m["channel"].(string)
		channel = strings.ToLower(strings.TrimSpace(channel))
		if channel == "" {
			continue
		}
		agentID, _ := b["agentId"].(string)
		acc, _ := m["accountId"].(string)
		bind := Binding{Index: i, AgentID: strings.TrimSpace(agentID), Match: Match{
			Channel: channel, AccountPattern: strings.TrimSpace(acc),
			GuildID: idString(m["guildId"]), TeamID: idString(m["teamId"]),
		}}
		if roles, _ := m["roles"].([]any); len(roles) > 0 {
			for _, r := range roles {
				bind.Match.Roles = append(bind.Match.Roles, idString(r))
			}
		}
		if p, ok := m["peer"].(map[string]any); ok {
			kind, _ := p["kind"].(string)
			bind.Match.Peer = &Peer{Kind: normalizeChatType(kind), ID: idString(p["id"])}
			if bind.Match.Peer.Kind == "" || bind.Match.Peer.ID == "" {
				continue // OpenClaw drops bindings with an invalid peer
			}
		}
		cfg.Bindings = append(cfg.Bindings, bind)
	}
}

// idString reads an id that OpenClaw accepts as a string or a number.
func idString(v any) string {
	switch x := v.(type) {
	case string:
		return strings.TrimSpace(x)
	case json.Number:
		return x.String()
	case float64:
		return fmt.Sprint(x)
	}
	return ""
}

// Agent returns the agent with a normalised id.
func (cfg *Config) Agent(id string) (Agent, bool) {
	for _, a := range cfg.Agents {
		if a.ID == id {
			return a, true
		}
	}
	return Agent{}, false
}

// DefaultAgent is the agent that answers when no binding matches: the one
// marked default (if exactly one is, and ownership is not "explicit"), the
// only agent, or "main" when there is no roster at all. ok is false when
// OpenClaw would refuse to guess (AGENT_SELECTION_REQUIRED).
func (cfg *Config) DefaultAgent() (id string, ok bool) {
	agents, _ := cfg.Raw["agents"].(map[string]any)
	explicit := false
	if agents != nil {
		own, _ := agents["ownership"].(string)
		explicit = own == "explicit"
	}
	if explicit {
		if defs, _ := agents["defaults"].(map[string]any); defs != nil {
			if sys, _ := defs["systemAgent"].(map[string]any); sys != nil {
				if raw, _ := sys["agentId"].(string); raw != "" {
					if id, ok := NormalizeID(raw); ok {
						if _, known := cfg.Agent(id); known {
							return id, true
						}
					}
				}
			}
		}
	} else {
		var marked []string
		for _, a := range cfg.Agents {
			if a.Default {
				marked = append(marked, a.ID)
			}
		}
		if len(marked) == 1 {
			return marked[0], true
		}
	}
	switch {
	case len(cfg.Agents) == 1:
		return cfg.Agents[0].ID, true
	case len(cfg.Agents) == 0 && cfg.AgentsFormat == "":
		return "main", true
	}
	return "", false
}
