package openclaw

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"strings"
)

// MatrixAccount is one Matrix account of the OpenClaw config.
type MatrixAccount struct {
	// ID is the normalised account id.
	ID     string `json:"account_id"`
	UserID string `json:"user_id,omitempty"`
	// token is the account's access token (never printed).
	token string
	// groupPolicy and groups after inheritance from channels.matrix.
	groupPolicy string
	groups      map[string]any
	enabled     bool
}

// MatrixAccounts lists channels.matrix.accounts, plus the implicit
// "default" account when the top level of channels.matrix has credentials.
func (cfg *Config) MatrixAccounts() []MatrixAccount {
	matrix, _ := dig(cfg.Raw, "channels", "matrix").(map[string]any)
	if matrix == nil {
		return nil
	}
	topPolicy, _ := matrix["groupPolicy"].(string)
	topGroups, _ := matrix["groups"].(map[string]any)
	if topGroups == nil {
		topGroups, _ = matrix["rooms"].(map[string]any) // legacy name
	}
	var out []MatrixAccount
	mk := func(id string, m map[string]any) MatrixAccount {
		a := MatrixAccount{ID: id, groupPolicy: topPolicy, groups: topGroups, enabled: true}
		a.UserID, _ = m["userId"].(string)
		a.token, _ = m["accessToken"].(string)
		if p, ok := m["groupPolicy"].(string); ok {
			a.groupPolicy = p
		}
		if g, ok := m["groups"].(map[string]any); ok {
			a.groups = g
		} else if g, ok := m["rooms"].(map[string]any); ok {
			a.groups = g
		}
		if e, ok := m["enabled"].(bool); ok {
			a.enabled = e
		}
		if a.groupPolicy == "" {
			a.groupPolicy = "allowlist"
		}
		return a
	}
	if hs, _ := matrix["homeserver"].(string); hs != "" && matrix["accessToken"] != nil {
		out = append(out, mk(DefaultAccountID, matrix))
	}
	accounts, _ := matrix["accounts"].(map[string]any)
	keys := make([]string, 0, len(accounts))
	for k := range accounts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		m, _ := accounts[k].(map[string]any)
		if m == nil {
			continue
		}
		out = append(out, mk(NormalizeAccountID(k), m))
	}
	return out
}

// admits reports whether the account takes messages from a room (by id or
// alias) under its groupPolicy and groups allowlist.
func (a MatrixAccount) admits(ids ...string) (bool, string) {
	switch a.groupPolicy {
	case "disabled":
		return false, "groupPolicy is disabled"
	case "open":
		return true, "groupPolicy open"
	}
	for _, id := range ids {
		g, ok := a.groups[id].(map[string]any)
		if !ok {
			continue
		}
		if en, ok := g["enabled"].(bool); ok && !en {
			return false, "groups." + id + ".enabled is false"
		}
		if acc, ok := g["account"].(string); ok && NormalizeAccountID(acc) != a.ID {
			continue
		}
		return true, "in groups"
	}
	return false, "not in the account's groups allowlist (groupPolicy allowlist)"
}

// RoomRoute is how one account routes messages of one room.
type RoomRoute struct {
	AccountID string `json:"account_id"`
	UserID    string `json:"user_id,omitempty"`
	// Joined is nil when unknown (no server asked).
	Joined  *bool  `json:"joined,omitempty"`
	Admits  bool   `json:"admits"`
	Reason  string `json:"admits_reason"`
	Route   Route  `json:"route"`
	Explain string `json:"explain"`
}

// RoomExplanation is who receives a message posted in a room.
type RoomExplanation struct {
	Room   string      `json:"room"`
	RoomID string      `json:"room_id,omitempty"`
	Alias  string      `json:"alias,omitempty"`
	Routes []RoomRoute `json:"routes"`
	// Agents are the agents that would answer (deduplicated).
	Agents []string `json:"agents"`
}

// ExplainOptions configures ExplainRooms.
type ExplainOptions struct {
	// Rooms adds rooms to explain (ids or aliases) to those the config names.
	Rooms []string
	// Client, when set, resolves aliases and checks who is joined (with
	// each account's own token, or the as_token masquerading as it).
	Client *Client
}

// ConfigRooms lists the Matrix rooms the config names: binding peers,
// groups keys and autoJoinAllowlist entries, in that order.
func (cfg *Config) ConfigRooms() []string {
	var out []string
	add := func(r string) {
		if (strings.HasPrefix(r, "!") || strings.HasPrefix(r, "#")) && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	for _, b := range cfg.Bindings {
		if b.Match.Channel == "matrix" && b.Match.Peer != nil && b.Match.Peer.Kind != "direct" {
			add(b.Match.Peer.ID)
		}
	}
	for _, a := range cfg.MatrixAccounts() {
		keys := make([]string, 0, len(a.groups))
		for k := range a.groups {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			add(k)
		}
	}
	accounts, _ := dig(cfg.Raw, "channels", "matrix", "accounts").(map[string]any)
	for _, v := range accounts {
		list, _ := dig(v, "autoJoinAllowlist").([]any)
		for _, r := range list {
			if s, ok := r.(string); ok {
				add(s)
			}
		}
	}
	return out
}

// ExplainRooms tells, for every room, which account receives a message
// posted there and which agent each routes it to.
func (cfg *Config) ExplainRooms(ctx context.Context, opts ExplainOptions) ([]RoomExplanation, error) {
	rooms := cfg.ConfigRooms()
	for _, r := range opts.Rooms {
		if !slices.Contains(rooms, r) {
			rooms = append(rooms, r)
		}
	}
	accounts := cfg.MatrixAccounts()
	joined := map[string][]string{} // account → joined room ids
	if opts.Client != nil {
		for _, a := range accounts {
			if a.UserID == "" {
				continue
			}
			var out struct {
				JoinedRooms []string `json:"joined_rooms"`
			}
			err := opts.Client.Do(ctx, "GET", "/_matrix/client/v3/joined_rooms", nil, a.token, nil, &out)
			if err != nil && opts.Client.ASToken != "" {
				err = opts.Client.Do(ctx, "GET", "/_matrix/client/v3/joined_rooms", url.Values{"user_id": {a.UserID}}, "", nil, &out)
			}
			if err == nil {
				joined[a.ID] = out.JoinedRooms
			}
		}
	}
	var out []RoomExplanation
	for _, room := range rooms {
		ex := RoomExplanation{Room: room, Agents: []string{}}
		ids := []string{room}
		if strings.HasPrefix(room, "!") {
			ex.RoomID = room
			if opts.Client != nil {
				ex.Alias = canonicalAlias(ctx, opts.Client, room, accounts)
			}
		} else if opts.Client != nil {
			var d struct {
				RoomID string `json:"room_id"`
			}
			if err := opts.Client.Do(ctx, "GET", "/_matrix/client/v3/directory/room/"+pathEscape(room), nil, "", nil, &d); err == nil {
				ex.RoomID = d.RoomID
				ids = append(ids, d.RoomID)
			}
		}
		for _, a := range accounts {
			if !a.enabled {
				continue
			}
			// Routing uses the room id; a binding written with the alias
			// matches only if OpenClaw sees the alias, which it does not.
			peerID := ex.RoomID
			if peerID == "" {
				peerID = room
			}
			rr := RoomRoute{AccountID: a.ID, UserID: a.UserID}
			rr.Admits, rr.Reason = a.admits(ids...)
			if j, ok := joined[a.ID]; ok {
				in := ex.RoomID != "" && slices.Contains(j, ex.RoomID)
				rr.Joined = &in
			}
			rr.Route = cfg.Resolve(RouteInput{Channel: "matrix", AccountID: a.ID, Peer: &Peer{Kind: "channel", ID: peerID}})
			rr.Explain = rr.Route.Explain()
			if rr.Admits && (rr.Joined == nil || *rr.Joined) && rr.Route.AgentID != "" && !rr.Route.UnknownAgent &&
				!slices.Contains(ex.Agents, rr.Route.AgentID) {
				ex.Agents = append(ex.Agents, rr.Route.AgentID)
			}
			ex.Routes = append(ex.Routes, rr)
		}
		out = append(out, ex)
	}
	return out, nil
}

// canonicalAlias reads a room's alias with the token of an account that may
// read its state ("" if none can).
func canonicalAlias(ctx context.Context, c *Client, roomID string, accounts []MatrixAccount) string {
	for _, a := range accounts {
		if a.token == "" {
			continue
		}
		var out struct {
			Alias string `json:"alias"`
		}
		if err := c.Do(ctx, "GET", "/_matrix/client/v3/rooms/"+pathEscape(roomID)+"/state/m.room.canonical_alias", nil, a.token, nil, &out); err == nil {
			return out.Alias
		}
	}
	return ""
}

// PrintExplanations writes ExplainRooms' answer for people.
func PrintExplanations(w io.Writer, exs []RoomExplanation, accounts int) {
	if len(exs) == 0 {
		fmt.Fprintln(w, "The config names no Matrix rooms (no bindings with a Matrix peer, no groups, no autoJoinAllowlist).")
		return
	}
	if accounts == 0 {
		fmt.Fprintln(w, "The config has no Matrix accounts (channels.matrix.accounts): no agent receives Matrix messages.")
	}
	for _, ex := range exs {
		title := ex.Room
		switch {
		case ex.RoomID != "" && ex.RoomID != ex.Room:
			title += " (" + ex.RoomID + ")"
		case ex.Alias != "":
			title = ex.Alias + " (" + ex.RoomID + ")"
		}
		fmt.Fprintf(w, "%s\n", title)
		for _, rr := range ex.Routes {
			state := ""
			switch {
			case rr.Joined != nil && !*rr.Joined:
				state = ", not joined: receives nothing"
			case rr.Joined != nil:
				state = ", joined"
			}
			who := rr.AccountID
			if rr.UserID != "" {
				who += " (" + rr.UserID + state + ")"
			} else if state != "" {
				who += " (" + strings.TrimPrefix(state, ", ") + ")"
			}
			if !rr.Admits {
				fmt.Fprintf(w, "  account %s: ignores the room — %s\n", who, rr.Reason)
				continue
			}
			fmt.Fprintf(w, "  account %s → %s\n", who, rr.Explain)
		}
		if len(ex.Agents) == 0 {
			fmt.Fprintf(w, "  ⇒ a message posted here reaches no agent\n\n")
		} else {
			fmt.Fprintf(w, "  ⇒ a message posted here reaches: %s\n\n", strings.Join(ex.Agents, ", "))
		}
	}
}
