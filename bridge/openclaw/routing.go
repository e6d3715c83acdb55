package openclaw

import "fmt"

// RouteInput is an inbound message as OpenClaw's router sees it.
type RouteInput struct {
	Channel   string
	AccountID string
	// Peer is the conversation: for a Matrix room {kind: "channel", id: <room id>}.
	Peer *Peer
	// ParentPeer is a DM's room (Matrix passes it; bindings may name it).
	ParentPeer *Peer
	GuildID    string
	TeamID     string
	RoleIDs    []string
}

// Route is the agent that receives a message and why.
type Route struct {
	// AgentID is "" when OpenClaw would refuse to pick one
	// (AGENT_SELECTION_REQUIRED: several agents, no binding, no default).
	AgentID string
	// MatchedBy names the rule, with OpenClaw's labels: binding.peer,
	// binding.peer.parent, binding.peer.wildcard, binding.guild+roles,
	// binding.guild, binding.team, binding.account, binding.channel, default.
	MatchedBy string
	// Binding is the index of the binding that matched, -1 for the default.
	Binding int
	// UnknownAgent is set when the binding names an agent that is not
	// configured (OpenClaw then fails the route).
	UnknownAgent bool
}

// Explain renders a route for people.
func (r Route) Explain() string {
	switch {
	case r.AgentID == "":
		return "no agent: several agents are configured and no binding or default agent applies (OpenClaw: AGENT_SELECTION_REQUIRED)"
	case r.UnknownAgent:
		return fmt.Sprintf("agent %q (%s, bindings[%d]) — not a configured agent: OpenClaw will refuse this route", r.AgentID, r.MatchedBy, r.Binding)
	case r.Binding >= 0:
		return fmt.Sprintf("agent %q (%s, bindings[%d])", r.AgentID, r.MatchedBy, r.Binding)
	}
	return fmt.Sprintf("agent %q (default agent: no binding matches)", r.AgentID)
}

// Resolve picks the agent for an inbound message exactly as OpenClaw's
// resolveAgentRoute does: only bindings of the message's channel and
// account (accountId as written, "" meaning the default account, or "*")
// are candidates; then the first match in file order of the most specific
// tier wins.
func (cfg *Config) Resolve(in RouteInput) Route {
	account := NormalizeAccountID(in.AccountID)
	var cands []Binding
	for _, b := range cfg.Bindings {
		if b.Match.Channel != in.Channel {
			continue
		}
		if b.Match.AccountPattern == "*" || NormalizeAccountID(b.Match.AccountPattern) == account {
			cands = append(cands, b)
		}
	}
	peer := normalizedPeer(in.Peer)
	parent := normalizedPeer(in.ParentPeer)
	roles := map[string]bool{}
	for _, r := range in.RoleIDs {
		roles[r] = true
	}
	scopeOK := func(m Match, p *Peer) bool {
		if m.Peer != nil && m.Peer.ID != "*" {
			if p == nil || !peerKindMatches(m.Peer.Kind, p.Kind) || p.ID != m.Peer.ID {
				return false
			}
		}
		if m.Peer != nil && m.Peer.ID == "*" && (p == nil || !peerKindMatches(m.Peer.Kind, p.Kind)) {
			return false
		}
		if m.GuildID != "" && m.GuildID != in.GuildID {
			return false
		}
		if m.TeamID != "" && m.TeamID != in.TeamID {
			return false
		}
		if len(m.Roles) > 0 {
			any := false
			for _, r := range m.Roles {
				any = any || roles[r]
			}
			if !any {
				return false
			}
		}
		return true
	}
	type tier struct {
		name string
		in   func(Binding) bool
		peer *Peer
		when bool
	}
	exactPeer := func(p *Peer) func(Binding) bool {
		return func(b Binding) bool {
			return b.Match.Peer != nil && b.Match.Peer.ID != "*" && p != nil && peerLookupKey(b.Match.Peer.Kind) == peerLookupKey(p.Kind) && b.Match.Peer.ID == p.ID
		}
	}
	noPeer := func(b Binding) bool { return b.Match.Peer == nil }
	tiers := []tier{
		{"binding.peer", exactPeer(peer), peer, peer != nil},
		{"binding.peer.parent", exactPeer(parent), parent, parent != nil && parent.ID != ""},
		{"binding.peer.wildcard", func(b Binding) bool { return b.Match.Peer != nil && b.Match.Peer.ID == "*" }, peer, peer != nil},
		{"binding.guild+roles", func(b Binding) bool { return noPeer(b) && b.Match.GuildID == in.GuildID && len(b.Match.Roles) > 0 }, peer, in.GuildID != "" && len(in.RoleIDs) > 0},
		{"binding.guild", func(b Binding) bool { return noPeer(b) && b.Match.GuildID == in.GuildID && len(b.Match.Roles) == 0 }, peer, in.GuildID != ""},
		{"binding.team", func(b Binding) bool { return noPeer(b) && b.Match.GuildID == "" && b.Match.TeamID == in.TeamID }, peer, in.TeamID != ""},
		{"binding.account", func(b Binding) bool {
			return noPeer(b) && b.Match.GuildID == "" && b.Match.TeamID == "" && b.Match.AccountPattern != "*"
		}, peer, true},
		{"binding.channel", func(b Binding) bool {
			return noPeer(b) && b.Match.GuildID == "" && b.Match.TeamID == "" && b.Match.AccountPattern == "*"
		}, peer, true},
	}
	for _, t := range tiers {
		if !t.when {
			continue
		}
		for _, b := range cands {
			if t.in(b) && scopeOK(b.Match, t.peer) {
				id, ok := NormalizeID(b.AgentID)
				if !ok {
					id = "main"
				}
				_, known := cfg.Agent(id)
				unknown := !known && len(cfg.Agents) > 0 && id != "main"
				return Route{AgentID: id, MatchedBy: t.name, Binding: b.Index, UnknownAgent: unknown}
			}
		}
	}
	id, ok := cfg.DefaultAgent()
	if !ok {
		return Route{MatchedBy: "default", Binding: -1}
	}
	return Route{AgentID: id, MatchedBy: "default", Binding: -1}
}

func normalizedPeer(p *Peer) *Peer {
	if p == nil {
		return nil
	}
	kind := normalizeChatType(p.Kind)
	if kind == "" {
		kind = p.Kind
	}
	return &Peer{Kind: kind, ID: p.ID}
}

// peerKindMatches: group and channel are interchangeable, as in OpenClaw.
func peerKindMatches(bindingKind, scopeKind string) bool {
	return peerLookupKey(bindingKind) == peerLookupKey(scopeKind)
}

func peerLookupKey(kind string) string {
	if kind == "channel" {
		return "group"
	}
	return kind
}
