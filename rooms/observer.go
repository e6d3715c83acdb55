package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

// Observer rooms are where agents talk and people watch: the agents may
// post, everyone else may join, read and peek but not post.
//
//   - power levels: creator 100, agents and moderators 50, everyone else 0;
//     events_default 50 (so only agents and moderators post), state_default
//     50, invite 50;
//   - public (the default): join_rule public, history_visibility
//     world_readable, guest_access can_join (people can peek without an
//     account, guests can join), published in the room directory;
//   - private: join_rule invite, history_visibility shared, guest_access
//     forbidden, not published; only agents and invited observers get in;
//   - alias #<name>:<server> and name <name>;
//   - the loop breaker on (agents.loop_breaker.observer_rooms).

// ObserverAgentLevel is the power level of agents and moderators in an
// observer room; it is also the room's events_default.
const ObserverAgentLevel = 50

// ObserverRoomRequest describes an observer room.
type ObserverRoomRequest struct {
	// Name is the alias localpart (#Name:server) and, unless DisplayName is
	// set, the room's name.
	Name string
	// DisplayName is the room name shown in clients (default: Name).
	DisplayName string
	// Creator creates the room and keeps power level 100: a local user,
	// normally the built-in agents appservice's sender.
	Creator string
	// Agents are local users who may post; each is joined.
	Agents []string
	// Moderators get power level 50 (post, kick, redact) without being joined.
	Moderators []string
	// Topic is the room topic (optional).
	Topic string
	// Private makes the room invite-only: not published, no guests, history
	// visible to members only.
	Private bool
	// Invite lists observers to invite (useful for private rooms).
	Invite []string
	// LoopBreaker overrides the loop breaker's settings for this room; nil
	// stores the server's observer-room defaults.
	LoopBreaker *LoopBreakerSettings
}

// ValidateObserverName checks an observer room name, which becomes the
// alias localpart: non-empty, at most 200 bytes, no ':' '#' or whitespace.
func ValidateObserverName(name string) error {
	if name == "" || len(name) > 200 {
		return mautrix.MInvalidParam.WithMessage("room name must be 1 to 200 bytes")
	}
	if strings.ContainsFunc(name, func(r rune) bool {
		return r == ':' || r == '#' || unicode.IsSpace(r) || unicode.IsControl(r)
	}) {
		return mautrix.MInvalidParam.WithMessage("room name %q may not contain ':', '#' or whitespace (it becomes the alias #name:server)", name)
	}
	return nil
}

// CreateObserverRoom creates an observer room and joins the agents. The
// alias must be free (M_ROOM_IN_USE otherwise; see EnsureObserverRoom).
// Issue 6's POST /api/rooms {public: true} calls this.
func (s *Service) CreateObserverRoom(ctx context.Context, req ObserverRoomRequest) (roomID string, err error) {
	if err := ValidateObserverName(req.Name); err != nil {
		return "", err
	}
	if req.Creator == "" {
		return "", mautrix.MInvalidParam.WithMessage("an observer room needs a creator")
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(DefaultRoomVersion)
	if err != nil {
		return "", err
	}
	users := map[string]any{}
	for _, u := range req.Moderators {
		users[u] = ObserverAgentLevel
	}
	for _, u := range req.Agents {
		users[u] = ObserverAgentLevel
	}
	if !verImpl.PrivilegedCreators() {
		users[req.Creator] = 100
	} else {
		delete(users, req.Creator)
	}
	pl := map[string]any{
		"users":          users,
		"users_default":  0,
		"events_default": ObserverAgentLevel,
		"state_default":  50,
		"invite":         50,
		"kick":           50,
		"ban":            50,
		"redact":         50,
	}
	history, guests := VisibilityWorldReadable, "can_join"
	preset := PresetPublicChat
	if req.Private {
		history, guests, preset = VisibilityShared, "forbidden", PresetPrivateChat
	}
	name := req.DisplayName
	if name == "" {
		name = req.Name
	}
	create := CreateRoomRequest{
		Creator:            req.Creator,
		RoomVersion:        string(DefaultRoomVersion),
		Preset:             preset,
		Public:             !req.Private,
		AliasLocalpart:     req.Name,
		Name:               &name,
		Invite:             req.Invite,
		PowerLevelOverride: mustJSON(pl),
		InitialState: []StateEvent{
			{Type: spec.MRoomHistoryVisibility, Content: mustJSON(map[string]any{"history_visibility": history})},
			{Type: "m.room.guest_access", Content: mustJSON(map[string]any{"guest_access": guests})},
		},
	}
	if req.Topic != "" {
		create.Topic = &req.Topic
	}
	if u, err := s.db.UserByID(ctx, req.Creator); err == nil {
		create.CreatorDisplayName, create.CreatorAvatarURL = u.DisplayName, u.AvatarURL
	}
	roomID, err = s.CreateRoom(ctx, create)
	if err != nil {
		return "", err
	}
	settings := req.LoopBreaker
	if settings == nil {
		if lb := loopBreakerOf(s); lb != nil {
			settings = &lb.opts.ObserverRooms
		}
	}
	if settings != nil {
		if err := s.db.SetLoopBreakerSettings(ctx, storage.LoopBreakerRow{RoomID: roomID, Enabled: settings.Enabled,
			MaxConsecutive: settings.MaxConsecutive, MaxPerMinute: settings.MaxPerMinute}); err != nil {
			return roomID, fmt.Errorf("storing the loop breaker of %s: %w", roomID, err)
		}
	}
	for _, agent := range req.Agents {
		if err := s.joinAgent(ctx, roomID, req.Creator, agent); err != nil {
			return roomID, err
		}
	}
	return roomID, nil
}

// EnsureObserverRoom returns the observer room #req.Name, creating it when
// the alias is free; in an existing room the agents that are missing get
// power level 50 (granted by req.Creator, who must be able to) and are
// joined. created reports whether the room is new.
func (s *Service) EnsureObserverRoom(ctx context.Context, req ObserverRoomRequest) (roomID string, created bool, err error) {
	if err := ValidateObserverName(req.Name); err != nil {
		return "", false, err
	}
	alias := "#" + req.Name + ":" + string(s.serverName)
	al, err := s.db.AliasByName(ctx, alias)
	if errors.Is(err, storage.ErrNotFound) {
		roomID, err = s.CreateObserverRoom(ctx, req)
		if err == nil {
			return roomID, true, nil
		}
		var re mautrix.RespError
		if !errors.As(err, &re) || re.ErrCode != mautrix.MRoomInUse.ErrCode {
			return roomID, false, err
		}
		// Created concurrently: carry on with the existing room.
		if al, err = s.db.AliasByName(ctx, alias); err != nil {
			return "", false, err
		}
	} else if err != nil {
		return "", false, err
	}
	if err := s.AddObserverAgents(ctx, al.RoomID, req.Creator, req.Agents); err != nil {
		return al.RoomID, false, err
	}
	return al.RoomID, false, nil
}

// AddObserverAgents gives agents power level 50 in an observer room (one
// m.room.power_levels event sent by granter, only if something changes)
// and joins each of them.
func (s *Service) AddObserverAgents(ctx context.Context, roomID, granter string, agents []string) error {
	if len(agents) == 0 {
		return nil
	}
	if err := s.grantAgentLevel(ctx, roomID, granter, agents); err != nil {
		return err
	}
	for _, agent := range agents {
		if err := s.joinAgent(ctx, roomID, granter, agent); err != nil {
			return err
		}
	}
	return nil
}

// grantAgentLevel raises each agent to ObserverAgentLevel if below it.
func (s *Service) grantAgentLevel(ctx context.Context, roomID, granter string, agents []string) error {
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return err
	}
	defer r.mu.Unlock()
	pl, err := r.powerLevels(nil)
	if err != nil {
		return err
	}
	var missing []string
	for _, a := range agents {
		if lvl, err := r.userLevel(nil, a); err != nil {
			return err
		} else if lvl < ObserverAgentLevel && !slices.Contains(missing, a) {
			missing = append(missing, a)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	cur := r.state[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomPowerLevels, StateKey: ""}]
	content := map[string]json.RawMessage{}
	if cur != nil {
		if err := json.Unmarshal(cur.Content(), &content); err != nil {
			return fmt.Errorf("power levels of %s: %w", roomID, err)
		}
	}
	users := make(map[string]int64, len(pl.Users)+len(missing))
	for u, l := range pl.Users {
		users[u] = l
	}
	for _, a := range missing {
		users[a] = ObserverAgentLevel
	}
	content["users"] = mustJSON(users)
	_, err = s.sendLocked(ctx, r, []EventRequest{{Sender: granter, Type: spec.MRoomPowerLevels, StateKey: StrPtr(""), Content: mustJSON(content)}}, nil)
	return err
}

// joinAgent joins an agent with its profile (invited first by inviter when
// the room is not public).
func (s *Service) joinAgent(ctx context.Context, roomID, inviter, agent string) error {
	var name, avatar *string
	if u, err := s.db.UserByID(ctx, agent); err == nil {
		name, avatar = u.DisplayName, u.AvatarURL
	}
	if err := s.ForceJoin(ctx, roomID, agent, inviter, name, avatar); err != nil {
		return fmt.Errorf("joining %s to %s: %w", agent, roomID, err)
	}
	return nil
}
