package rooms

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

// Room presets of POST /createRoom.
const (
	PresetPrivateChat        = "private_chat"
	PresetPublicChat         = "public_chat"
	PresetTrustedPrivateChat = "trusted_private_chat"
)

// StateEvent is a state event given by a client (initial_state).
type StateEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

// CreateRoomRequest is a validated POST /createRoom body.
type CreateRoomRequest struct {
	Creator            string
	RoomVersion        string
	Preset             string
	Public             bool // visibility: public (published in the directory)
	AliasLocalpart     string
	Name               *string
	Topic              *string
	Invite             []string
	InitialState       []StateEvent
	PowerLevelOverride json.RawMessage
	CreationContent    json.RawMessage
	IsDirect           bool
	CreatorDisplayName *string
	CreatorAvatarURL   *string
}

const idAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

// RandomString returns n random letters.
func RandomString(n int) string {
	b := make([]byte, n)
	max := big.NewInt(int64(len(idAlphabet)))
	for i := range b {
		v, _ := rand.Int(rand.Reader, max)
		b[i] = idAlphabet[v.Int64()]
	}
	return string(b)
}

// CreateRoom creates a room with the spec's event sequence: create, creator
// join, power levels, canonical alias, preset rules, initial_state, name,
// topic, invites — all in one transaction.
func (s *Service) CreateRoom(ctx context.Context, req CreateRoomRequest) (string, error) {
	version := gomatrixserverlib.RoomVersion(req.RoomVersion)
	if version == "" {
		version = DefaultRoomVersion
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil || !verImpl.Stable() {
		return "", mautrix.MUnsupportedRoomVersion.WithStatus(400).WithMessage("Room version %q is not supported", version)
	}
	preset := req.Preset
	if preset == "" {
		preset = PresetPrivateChat
		if req.Public {
			preset = PresetPublicChat
		}
	}
	var alias string
	if req.AliasLocalpart != "" {
		alias = "#" + req.AliasLocalpart + ":" + string(s.serverName)
		if _, err := s.db.AliasByName(ctx, alias); err == nil {
			return "", mautrix.MRoomInUse.WithMessage("Room alias %s already exists", alias)
		}
	}

	reqs, err := s.creationEvents(req, verImpl, preset, alias)
	if err != nil {
		return "", err
	}
	roomID := ""
	if !verImpl.DomainlessRoomIDs() {
		roomID = "!" + RandomString(18) + ":" + string(s.serverName)
	}
	r := &room{id: roomID, version: verImpl, state: map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}, loaded: true}
	r.recent.events = make([]*storage.Event, 0, recentCapacity) // a new room: memory holds all of it
	r.mu.Lock()
	defer r.mu.Unlock()
	_, err = s.sendLocked(ctx, r, reqs, func(tx *storage.Tx) error {
		if err := tx.InsertRoom(ctx, storage.Room{RoomID: r.id, RoomVersion: string(version), Creator: req.Creator,
			CreatedTS: time.Now().UnixMilli(), Published: req.Public}); err != nil {
			return fmt.Errorf("inserting room: %w", err)
		}
		if alias != "" {
			if err := tx.InsertAlias(ctx, alias, r.id, req.Creator); err != nil {
				if errors.Is(err, storage.ErrAlreadyExists) {
					return mautrix.MRoomInUse.WithMessage("Room alias %s already exists", alias)
				}
				return err
			}
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	s.rooms[r.id] = r
	s.mu.Unlock()
	return r.id, nil
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called on maps of plain values
	}
	return b
}

func (s *Service) creationEvents(req CreateRoomRequest, verImpl gomatrixserverlib.IRoomVersion, preset, alias string) ([]EventRequest, error) {
	creator := req.Creator
	state := func(t, k string, content json.RawMessage) EventRequest {
		return EventRequest{Sender: creator, Type: t, StateKey: StrPtr(k), Content: content}
	}

	createContent := map[string]any{}
	if len(req.CreationContent) > 0 {
		if err := json.Unmarshal(req.CreationContent, &createContent); err != nil {
			return nil, mautrix.MBadJSON.WithMessage("creation_content must be an object")
		}
	}
	createContent["room_version"] = string(verImpl.Version())
	if !RedactsInContent(verImpl.Version()) { // v1–v10 name the creator; v11 dropped it
		createContent["creator"] = creator
	}
	reqs := []EventRequest{state(spec.MRoomCreate, "", mustJSON(createContent))}

	member := map[string]any{"membership": spec.Join}
	if req.CreatorDisplayName != nil {
		member["displayname"] = *req.CreatorDisplayName
	}
	if req.CreatorAvatarURL != nil {
		member["avatar_url"] = *req.CreatorAvatarURL
	}
	reqs = append(reqs, state(spec.MRoomMember, creator, mustJSON(member)))

	users := map[string]any{}
	if !verImpl.PrivilegedCreators() {
		users[creator] = 100
	}
	if preset == PresetTrustedPrivateChat {
		for _, u := range req.Invite {
			users[u] = 100
		}
	}
	inviteLevel := 0
	if preset == PresetPublicChat {
		inviteLevel = 50
	}
	pl := map[string]any{
		"users":          users,
		"users_default":  0,
		"events_default": 0,
		"state_default":  50,
		"ban":            50,
		"kick":           50,
		"redact":         50,
		"invite":         inviteLevel,
		"events": map[string]any{
			"m.room.name":               50,
			"m.room.power_levels":       100,
			"m.room.history_visibility": 100,
			"m.room.canonical_alias":    50,
			"m.room.avatar":             50,
			"m.room.tombstone":          100,
			"m.room.server_acl":         100,
			"m.room.encryption":         100,
		},
		"notifications": map[string]any{"room": 50},
	}
	if len(req.PowerLevelOverride) > 0 {
		var override map[string]json.RawMessage
		if err := json.Unmarshal(req.PowerLevelOverride, &override); err != nil {
			return nil, mautrix.MBadJSON.WithMessage("power_level_content_override must be an object")
		}
		for k, v := range override {
			pl[k] = v
		}
	}
	reqs = append(reqs, state(spec.MRoomPowerLevels, "", mustJSON(pl)))

	if alias != "" {
		reqs = append(reqs, state(spec.MRoomCanonicalAlias, "", mustJSON(map[string]any{"alias": alias})))
	}

	joinRule, guestAccess := spec.Invite, "can_join"
	if preset == PresetPublicChat {
		joinRule, guestAccess = spec.Public, "forbidden"
	}
	reqs = append(reqs,
		state(spec.MRoomJoinRules, "", mustJSON(map[string]any{"join_rule": joinRule})),
		state(spec.MRoomHistoryVisibility, "", mustJSON(map[string]any{"history_visibility": "shared"})),
		state("m.room.guest_access", "", mustJSON(map[string]any{"guest_access": guestAccess})),
	)
	for _, ev := range req.InitialState {
		if ev.Type == spec.MRoomCreate || ev.Type == spec.MRoomMember {
			return nil, mautrix.MBadJSON.WithMessage("initial_state may not contain %s", ev.Type)
		}
		reqs = append(reqs, state(ev.Type, ev.StateKey, ev.Content))
	}
	if req.Name != nil {
		reqs = append(reqs, state(spec.MRoomName, "", mustJSON(map[string]any{"name": *req.Name})))
	}
	if req.Topic != nil {
		reqs = append(reqs, state(spec.MRoomTopic, "", mustJSON(map[string]any{"topic": *req.Topic})))
	}
	for _, u := range req.Invite {
		content := map[string]any{"membership": spec.Invite}
		if req.IsDirect {
			content["is_direct"] = true
		}
		reqs = append(reqs, state(spec.MRoomMember, u, mustJSON(content)))
	}
	return reqs, nil
}
