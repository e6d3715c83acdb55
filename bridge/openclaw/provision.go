package openclaw

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sort"
	"strings"
)

// LinkOptions configures Link.
type LinkOptions struct {
	// Client reaches AgentSpace with the agents appservice's as_token.
	Client *Client
	// Homeserver is the URL written into OpenClaw's config (default:
	// Client.BaseURL): where the gateway reaches AgentSpace.
	Homeserver string
	// UserPrefix makes agent "alex" the user @<prefix>alex:<server>.
	UserPrefix string
	// Rooms are observer rooms to create (or complete) and join agents to,
	// in addition to the #aliases named by the config's Matrix bindings.
	Rooms []RoomSpec
	// Rotate issues fresh tokens (on new devices) and revokes the old ones.
	Rotate bool
	// Logf reports progress (never tokens); nil: silent.
	Logf func(format string, args ...any)
}

// RoomSpec is an observer room and the agents bound to it (nil: all).
type RoomSpec struct {
	Name   string
	Agents []string
}

// ParseRoomSpec reads "lobby" (every agent) or "lobby=alex,mia".
func ParseRoomSpec(s string) (RoomSpec, error) {
	name, list, hasList := strings.Cut(strings.TrimSpace(s), "=")
	name = strings.TrimPrefix(name, "#")
	if i := strings.IndexByte(name, ':'); i >= 0 {
		name = name[:i] // #lobby:server → lobby
	}
	if name == "" {
		return RoomSpec{}, fmt.Errorf("room %q: empty name", s)
	}
	spec := RoomSpec{Name: name}
	if hasList {
		for _, a := range strings.Split(list, ",") {
			id, ok := NormalizeID(a)
			if !ok {
				return RoomSpec{}, fmt.Errorf("room %q: %q is not an agent id", s, a)
			}
			spec.Agents = append(spec.Agents, id)
		}
	}
	return spec, nil
}

// LinkedAccount is one agent's Matrix account.
type LinkedAccount struct {
	AgentID  string `json:"agent_id"`
	Name     string `json:"name"`
	UserID   string `json:"user_id"`
	DeviceID string `json:"device_id"`
	// AccessToken is the agent's token (written into OpenClaw's config only).
	AccessToken string `json:"-"`
	// ManagedToken: the config keeps the token elsewhere (a SecretRef), so
	// Link neither checked nor replaced it.
	ManagedToken bool `json:"managed_token,omitempty"`
	UserCreated  bool `json:"user_created"`
	NameSet      bool `json:"name_set"`
	TokenIssued  bool `json:"token_issued"`
	Rotated      bool `json:"rotated"`
}

// LinkedRoom is an observer room the agents were joined to.
type LinkedRoom struct {
	Name    string   `json:"name"`
	Alias   string   `json:"alias"`
	RoomID  string   `json:"room_id"`
	Agents  []string `json:"agents"`
	Created bool     `json:"created"`
}

// LinkResult is what Link did and the config section for OpenClaw.
type LinkResult struct {
	ServerName string          `json:"server_name"`
	Homeserver string          `json:"homeserver"`
	Accounts   []LinkedAccount `json:"accounts"`
	Rooms      []LinkedRoom    `json:"rooms"`
	// Warnings are problems that did not stop the link (e.g. a binding's
	// room named by id that the agent could not join).
	Warnings []string `json:"warnings,omitempty"`
	// PrivateNetwork: the homeserver is loopback/private, so OpenClaw needs
	// network.dangerouslyAllowPrivateNetwork.
	PrivateNetwork bool `json:"private_network"`

	bindings []roomBinding
}

type roomBinding struct{ roomID, agentID string }

// Link provisions every agent of cfg in AgentSpace: a bot user in the
// agents appservice's namespace with the agent's name, a token and device
// of its own (reused while valid, unless Rotate), and the observer rooms
// with the bound agents joined. Running it again changes nothing.
func Link(ctx context.Context, cfg *Config, opts LinkOptions) (*LinkResult, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	c := opts.Client
	var who struct {
		UserID string `json:"user_id"`
	}
	if err := c.Do(ctx, "GET", "/_matrix/client/v3/account/whoami", nil, "", nil, &who); err != nil {
		return nil, fmt.Errorf("checking the appservice token with %s: %w", c.BaseURL, err)
	}
	_, serverName, ok := strings.Cut(who.UserID, ":")
	if !ok {
		return nil, fmt.Errorf("whoami answered %q", who.UserID)
	}
	hs := opts.Homeserver
	if hs == "" {
		hs = c.BaseURL
	}
	res := &LinkResult{ServerName: serverName, Homeserver: strings.TrimRight(hs, "/"), PrivateNetwork: isPrivateURL(hs)}

	agents := cfg.Agents
	if len(agents) == 0 && cfg.AgentsFormat == "" {
		agents = []Agent{{ID: "main", Name: "main", Default: true}}
	}
	if len(agents) == 0 {
		return nil, fmt.Errorf("the OpenClaw config lists no agents")
	}
	existing := matrixAccounts(cfg.Raw)
	for _, ag := range agents {
		acc, err := linkAgent(ctx, c, serverName, opts, ag, existing[ag.ID], logf)
		if err != nil {
			return nil, fmt.Errorf("agent %s: %w", ag.ID, err)
		}
		res.Accounts = append(res.Accounts, *acc)
	}
	userOf := map[string]string{}
	for _, a := range res.Accounts {
		userOf[a.AgentID] = a.UserID
	}

	// Rooms: --rooms plus #aliases in the config's Matrix bindings.
	specs := map[string][]string{}
	var order []string
	addSpec := func(name string, ids []string) {
		if _, seen := specs[name]; !seen {
			order = append(order, name)
			specs[name] = []string{}
		}
		for _, id := range ids {
			if !slices.Contains(specs[name], id) {
				specs[name] = append(specs[name], id)
			}
		}
	}
	for _, r := range opts.Rooms {
		ids := r.Agents
		if ids == nil {
			for _, a := range agents {
				ids = append(ids, a.ID)
			}
		}
		for _, id := range ids {
			if _, ok := userOf[id]; !ok {
				return nil, fmt.Errorf("room %s: %q is not an agent of this OpenClaw config", r.Name, id)
			}
		}
		addSpec(r.Name, ids)
	}
	for _, b := range cfg.Bindings {
		if b.Match.Channel != "matrix" || b.Match.Peer == nil {
			continue
		}
		id, _ := NormalizeID(b.AgentID)
		if _, ok := userOf[id]; !ok {
			continue
		}
		switch pid := b.Match.Peer.ID; {
		case strings.HasPrefix(pid, "#"):
			local, server, _ := strings.Cut(pid[1:], ":")
			if server != "" && server != serverName {
				res.Warnings = append(res.Warnings, fmt.Sprintf("bindings[%d]: %s is on another server; skipped", b.Index, pid))
				continue
			}
			addSpec(local, []string{id})
		case strings.HasPrefix(pid, "!"):
			// A room named by id: join the bound agent if it is not yet.
			err := c.Do(ctx, "POST", "/_matrix/client/v3/join/"+pathEscape(pid), url.Values{"user_id": {userOf[id]}}, "", map[string]any{}, nil)
			if err != nil {
				res.Warnings = append(res.Warnings, fmt.Sprintf("bindings[%d]: could not join %s to %s: %v", b.Index, userOf[id], pid, err))
			}
		}
	}
	for _, name := range order {
		ids := specs[name]
		users := make([]string, len(ids))
		for i, id := range ids {
			users[i] = userOf[id]
		}
		var out struct {
			RoomID  string `json:"room_id"`
			Alias   string `json:"alias"`
			Created bool   `json:"created"`
		}
		if err := c.Do(ctx, "POST", "/_agentspace/admin/v1/rooms", nil, "", map[string]any{"name": name, "agents": users}, &out); err != nil {
			return nil, fmt.Errorf("observer room %s: %w", name, err)
		}
		verb := "exists"
		if out.Created {
			verb = "created"
		}
		logf("room %s (%s) %s; agents joined: %s", out.Alias, out.RoomID, verb, strings.Join(ids, ", "))
		res.Rooms = append(res.Rooms, LinkedRoom{Name: name, Alias: out.Alias, RoomID: out.RoomID, Agents: ids, Created: out.Created})
		for _, id := range ids {
			res.bindings = append(res.bindings, roomBinding{roomID: out.RoomID, agentID: id})
		}
	}
	return res, nil
}

// existingAccount is what the OpenClaw config already has for an agent.
type existingAccount struct {
	userID, deviceID, token string
	// secretRef: accessToken is not a plain string (a SecretRef).
	secretRef bool
}

// matrixAccounts reads channels.matrix.accounts.
func matrixAccounts(raw map[string]any) map[string]existingAccount {
	out := map[string]existingAccount{}
	accounts, _ := dig(raw, "channels", "matrix", "accounts").(map[string]any)
	for k, v := range accounts {
		m, _ := v.(map[string]any)
		if m == nil {
			continue
		}
		var e existingAccount
		e.userID, _ = m["userId"].(string)
		e.deviceID, _ = m["deviceId"].(string)
		switch t := m["accessToken"].(type) {
		case string:
			e.token = t
		case nil:
		default:
			e.secretRef = true
		}
		out[NormalizeAccountID(k)] = e
	}
	return out
}

// dig walks nested objects.
func dig(v any, path ...string) any {
	for _, p := range path {
		m, _ := v.(map[string]any)
		if m == nil {
			return nil
		}
		v = m[p]
	}
	return v
}

// linkAgent provisions one agent's user, name and token.
func linkAgent(ctx context.Context, c *Client, serverName string, opts LinkOptions, ag Agent, ex existingAccount, logf func(string, ...any)) (*LinkedAccount, error) {
	localpart := opts.UserPrefix + ag.ID
	userID := "@" + localpart + ":" + serverName
	acc := &LinkedAccount{AgentID: ag.ID, Name: ag.Name, UserID: userID}

	err := c.Do(ctx, "POST", "/_matrix/client/v3/register", nil, "", map[string]any{
		"type": "m.login.application_service", "username": localpart, "inhibit_login": true,
	}, nil)
	switch {
	case err == nil:
		acc.UserCreated = true
		logf("agent %s: created %s", ag.ID, userID)
	case IsCode(err, "M_USER_IN_USE"):
	default:
		return nil, fmt.Errorf("registering %s: %w", userID, err)
	}

	var prof struct {
		DisplayName string `json:"displayname"`
	}
	if err := c.Do(ctx, "GET", "/_matrix/client/v3/profile/"+pathEscape(userID), nil, "", nil, &prof); err != nil && !IsCode(err, "M_NOT_FOUND") {
		return nil, fmt.Errorf("reading the profile of %s: %w", userID, err)
	}
	if prof.DisplayName != ag.Name {
		if err := c.Do(ctx, "PUT", "/_matrix/client/v3/profile/"+pathEscape(userID)+"/displayname", url.Values{"user_id": {userID}}, "",
			map[string]any{"displayname": ag.Name}, nil); err != nil {
			return nil, fmt.Errorf("setting the display name of %s: %w", userID, err)
		}
		acc.NameSet = true
		logf("agent %s: display name %q", ag.ID, ag.Name)
	}

	if ex.secretRef && ex.userID == userID && !opts.Rotate {
		acc.ManagedToken, acc.DeviceID = true, ex.deviceID
		logf("agent %s: accessToken is a secret reference; left as it is", ag.ID)
		return acc, nil
	}
	// Reuse a token that still works (idempotent runs change nothing).
	oldValid := false
	oldDevice := ex.deviceID
	if ex.token != "" && ex.userID == userID {
		var w struct {
			UserID   string `json:"user_id"`
			DeviceID string `json:"device_id"`
		}
		if err := c.Do(ctx, "GET", "/_matrix/client/v3/account/whoami", nil, ex.token, nil, &w); err == nil && w.UserID == userID {
			oldValid, oldDevice = true, w.DeviceID
			if !opts.Rotate {
				acc.AccessToken, acc.DeviceID = ex.token, w.DeviceID
				return acc, nil
			}
		}
	}
	// A new token: on the known device (its old tokens end), or, when
	// rotating or without one, on a new device.
	login := map[string]any{
		"type":                        "m.login.application_service",
		"identifier":                  map[string]any{"type": "m.id.user", "user": userID},
		"initial_device_display_name": "OpenClaw gateway (" + ag.ID + ")",
	}
	if oldDevice != "" && !opts.Rotate {
		login["device_id"] = oldDevice
	}
	var out struct {
		AccessToken string `json:"access_token"`
		DeviceID    string `json:"device_id"`
	}
	if err := c.Do(ctx, "POST", "/_matrix/client/v3/login", nil, "", login, &out); err != nil {
		return nil, fmt.Errorf("logging in %s: %w", userID, err)
	}
	acc.AccessToken, acc.DeviceID, acc.TokenIssued = out.AccessToken, out.DeviceID, true
	logf("agent %s: new access token for device %s", ag.ID, out.DeviceID)
	if opts.Rotate && oldDevice != "" && oldDevice != out.DeviceID {
		if err := revokeDevice(ctx, c, userID, oldDevice, ex.token, oldValid); err != nil {
			return nil, fmt.Errorf("revoking the old device %s of %s: %w", oldDevice, userID, err)
		}
		acc.Rotated = true
		logf("agent %s: old device %s and its tokens revoked", ag.ID, oldDevice)
	}
	return acc, nil
}

// revokeDevice ends a device and every token of it with standard calls:
// the old token logs itself out; without it, an appservice login on the
// device ends its old tokens and the new token then logs out.
func revokeDevice(ctx context.Context, c *Client, userID, deviceID, oldToken string, oldValid bool) error {
	if !oldValid {
		var out struct {
			AccessToken string `json:"access_token"`
		}
		err := c.Do(ctx, "POST", "/_matrix/client/v3/login", nil, "", map[string]any{
			"type":       "m.login.application_service",
			"identifier": map[string]any{"type": "m.id.user", "user": userID},
			"device_id":  deviceID,
		}, &out)
		if err != nil {
			return err
		}
		oldToken = out.AccessToken
	}
	return c.Do(ctx, "POST", "/_matrix/client/v3/logout", nil, oldToken, map[string]any{}, nil)
}

// isPrivateURL reports whether OpenClaw will treat the homeserver as a
// private network target: loopback, private or link-local addresses, and
// names like localhost or single-label hosts.
func isPrivateURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	host := strings.ToLower(u.Hostname())
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() ||
			(ip.To4() != nil && ip.To4()[0] == 100 && ip.To4()[1]&0xc0 == 64) // 100.64/10 (Tailscale)
	}
	return host == "localhost" || strings.HasSuffix(host, ".localhost") || strings.HasSuffix(host, ".local") ||
		strings.HasSuffix(host, ".internal") || strings.HasSuffix(host, ".lan") || !strings.Contains(host, ".")
}

// Section is the OpenClaw configuration Link's result calls for: the
// Matrix accounts under channels.matrix.accounts, and one binding per
// (room, agent). Accounts whose token is managed elsewhere carry no
// credentials.
func (res *LinkResult) Section() map[string]any {
	accounts := map[string]any{}
	for _, a := range res.Accounts {
		acc := map[string]any{"enabled": true, "name": a.Name, "homeserver": res.Homeserver, "userId": a.UserID}
		if !a.ManagedToken {
			acc["accessToken"] = a.AccessToken
			acc["deviceId"] = a.DeviceID
		}
		if res.PrivateNetwork {
			acc["network"] = map[string]any{"dangerouslyAllowPrivateNetwork": true}
		}
		var rooms []any
		groups := map[string]any{}
		for _, b := range res.bindings {
			if b.agentID == a.AgentID {
				rooms = append(rooms, b.roomID)
				groups[b.roomID] = map[string]any{"requireMention": false, "allowBots": true}
			}
		}
		if len(rooms) > 0 {
			acc["autoJoin"] = "allowlist"
			acc["autoJoinAllowlist"] = rooms
			acc["groupPolicy"] = "allowlist"
			acc["groups"] = groups
		}
		accounts[a.AgentID] = acc
	}
	bindings := []any{}
	for _, b := range res.bindings {
		bindings = append(bindings, bindingFor(b.agentID, b.roomID))
	}
	return map[string]any{
		"channels": map[string]any{"matrix": map[string]any{"enabled": true, "accounts": accounts}},
		"bindings": bindings,
	}
}

// bindingFor routes one agent's account in one room to the agent.
func bindingFor(agentID, roomID string) map[string]any {
	return map[string]any{"agentId": agentID, "match": map[string]any{
		"channel": "matrix", "accountId": agentID, "peer": map[string]any{"kind": "channel", "id": roomID},
	}}
}

// Merge returns a copy of raw with the result merged in, and what changed.
// Only the Matrix accounts of the linked agents and the bindings are
// touched: credentials and homeserver are set; autoJoin becomes
// "allowlist" unless it is "always"; the rooms are added to
// autoJoinAllowlist and groups (existing entries are kept); groupPolicy
// and network are set only when missing; existing bindings stay, and a
// binding is added only when no equal one exists.
func (res *LinkResult) Merge(raw map[string]any) (map[string]any, []string) {
	out := deepCopy(raw).(map[string]any)
	var changes []string
	obj := func(parent map[string]any, key string) map[string]any {
		m, ok := parent[key].(map[string]any)
		if !ok {
			m = map[string]any{}
			parent[key] = m
		}
		return m
	}
	set := func(m map[string]any, key string, v any, what string) {
		if !equalJSON(m[key], v) {
			m[key] = v
			changes = append(changes, what)
		}
	}
	matrix := obj(obj(out, "channels"), "matrix")
	if _, ok := matrix["enabled"]; !ok {
		set(matrix, "enabled", true, "channels.matrix.enabled")
	}
	accounts := obj(matrix, "accounts")
	section := res.Section()
	for _, a := range res.Accounts {
		want := dig(section, "channels", "matrix", "accounts", a.AgentID).(map[string]any)
		key := a.AgentID
		for k := range accounts { // an existing key that normalises to the id
			if NormalizeAccountID(k) == a.AgentID {
				key = k
			}
		}
		_, had := accounts[key]
		acc := obj(accounts, key)
		p := "channels.matrix.accounts." + key + "."
		before := len(changes)
		for _, k := range []string{"homeserver", "userId", "accessToken", "deviceId"} {
			if v, ok := want[k]; ok {
				set(acc, k, v, p+k)
			}
		}
		for _, k := range []string{"enabled", "name", "groupPolicy"} {
			if _, ok := acc[k]; !ok && want[k] != nil {
				set(acc, k, want[k], p+k)
			}
		}
		if net, ok := want["network"].(map[string]any); ok {
			n := obj(acc, "network")
			set(n, "dangerouslyAllowPrivateNetwork", net["dangerouslyAllowPrivateNetwork"], p+"network.dangerouslyAllowPrivateNetwork")
		}
		if want["autoJoin"] != nil {
			if aj, _ := acc["autoJoin"].(string); aj != "always" {
				set(acc, "autoJoin", "allowlist", p+"autoJoin")
			}
			list, _ := acc["autoJoinAllowlist"].([]any)
			grown := slices.Clone(list)
			for _, r := range want["autoJoinAllowlist"].([]any) {
				if !slices.ContainsFunc(grown, func(x any) bool { return x == r }) {
					grown = append(grown, r)
				}
			}
			if len(grown) != len(list) {
				set(acc, "autoJoinAllowlist", grown, p+"autoJoinAllowlist")
			}
			groups := obj(acc, "groups")
			keys := make([]string, 0)
			for r := range want["groups"].(map[string]any) {
				keys = append(keys, r)
			}
			sort.Strings(keys)
			for _, r := range keys {
				if _, ok := groups[r]; !ok {
					set(groups, r, want["groups"].(map[string]any)[r], p+"groups."+r)
				}
			}
		}
		if !had {
			changes = append(changes[:before], "channels.matrix.accounts."+key+" (new account)")
		}
	}
	bindings, _ := out["bindings"].([]any)
	added := false
	for _, b := range res.bindings {
		if !hasBinding(bindings, b.agentID, b.roomID) {
			bindings = append(bindings, bindingFor(b.agentID, b.roomID))
			changes = append(changes, "bindings: "+b.agentID+" in "+b.roomID)
			added = true
		}
	}
	if added {
		out["bindings"] = bindings
	}
	return out, changes
}

// hasBinding reports whether an equivalent route binding exists.
func hasBinding(list []any, agentID, roomID string) bool {
	for _, e := range list {
		b, _ := e.(map[string]any)
		if b == nil {
			continue
		}
		if t, _ := b["type"].(string); t != "" && t != "route" {
			continue
		}
		id, _ := b["agentId"].(string)
		m, _ := b["match"].(map[string]any)
		if m == nil {
			continue
		}
		ch, _ := m["channel"].(string)
		acc, _ := m["accountId"].(string)
		p, _ := m["peer"].(map[string]any)
		if p == nil {
			continue
		}
		kind, _ := p["kind"].(string)
		if nid, _ := NormalizeID(id); nid != agentID || strings.ToLower(ch) != "matrix" || NormalizeAccountID(acc) != agentID ||
			peerLookupKey(normalizeChatType(kind)) != "group" || idString(p["id"]) != roomID {
			continue
		}
		return true
	}
	return false
}

// deepCopy copies generic JSON values.
func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = deepCopy(e)
		}
		return l
	}
	return v
}
