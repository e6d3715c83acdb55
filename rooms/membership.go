package rooms

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

// MembershipRequest changes one user's membership.
type MembershipRequest struct {
	Sender     string
	Target     string
	Membership string // join, invite, leave, ban, knock
	Reason     string
	IsDirect   bool
	// DisplayName and AvatarURL are the joining user's profile.
	DisplayName *string
	AvatarURL   *string
	// Extra content from the client (e.g. join's third-party fields), merged first.
	Extra map[string]json.RawMessage
}

// ChangeMembership sends an m.room.member event. A join by an already joined
// user with an unchanged profile is a no-op that returns the existing event:
// clients (matrix-js-sdk) send the same join several times at once.
func (s *Service) ChangeMembership(ctx context.Context, roomID string, req MembershipRequest) (*storage.Event, error) {
	if req.Membership == spec.Join || req.Membership == spec.Invite || req.Membership == spec.Knock {
		// A room an admin blocked takes nobody in (leaving and bans still work).
		if err := s.checkNotBlocked(ctx, roomID); err != nil {
			return nil, err
		}
	}
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return nil, err
	}
	defer r.mu.Unlock()

	// Acting on someone else (invite, kick, ban, unban) needs the sender in
	// the room; checked first so a non-member learns nothing of the room.
	if req.Sender != req.Target && r.membership(req.Sender) != spec.Join {
		return nil, errNotInRoom
	}
	current := r.state[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomMember, StateKey: req.Target}]
	curMembership := ""
	if current != nil {
		curMembership, _ = current.Membership()
	}
	switch {
	case req.Membership == spec.Join && curMembership == spec.Join && sameProfile(current, req):
		return s.db.EventByID(ctx, current.EventID())
	case req.Membership == spec.Invite && curMembership == spec.Invite:
		return s.db.EventByID(ctx, current.EventID())
	case req.Membership == spec.Ban && curMembership == spec.Ban:
		return s.db.EventByID(ctx, current.EventID())
	case req.Membership == spec.Leave && req.Sender == req.Target && (curMembership == spec.Leave || curMembership == ""):
		if curMembership == "" {
			return nil, mautrix.MForbidden.WithMessage("You are not a member of this room")
		}
		return s.db.EventByID(ctx, current.EventID())
	case req.Membership == spec.Invite && curMembership == spec.Join:
		return nil, mautrix.MForbidden.WithMessage("%s is already in the room", req.Target)
	case req.Membership == spec.Invite && curMembership == spec.Ban:
		return nil, mautrix.MForbidden.WithMessage("%s is banned from the room", req.Target)
	}

	content := map[string]any{}
	for k, v := range req.Extra {
		content[k] = v
	}
	content["membership"] = req.Membership
	if req.Reason != "" {
		content["reason"] = req.Reason
	}
	if req.IsDirect {
		content["is_direct"] = true
	}
	if req.Membership == spec.Join {
		if req.DisplayName != nil {
			content["displayname"] = *req.DisplayName
		}
		if req.AvatarURL != nil {
			content["avatar_url"] = *req.AvatarURL
		}
	}
	evs, err := s.sendLocked(ctx, r, []EventRequest{{
		Sender: req.Sender, Type: spec.MRoomMember, StateKey: StrPtr(req.Target), Content: mustJSON(content),
	}}, nil)
	if err != nil {
		return nil, err
	}
	return evs[0], nil
}

var errNotInRoom = mautrix.MForbidden.WithMessage("You are not in this room")

// membership is a user's current membership of the room ("" when none).
func (r *room) membership(userID string) string {
	ev := r.state[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomMember, StateKey: userID}]
	if ev == nil {
		return ""
	}
	m, _ := ev.Membership()
	return m
}

func sameProfile(ev gomatrixserverlib.PDU, req MembershipRequest) bool {
	var c struct {
		DisplayName *string `json:"displayname"`
		AvatarURL   *string `json:"avatar_url"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	eq := func(a, b *string) bool { return (a == nil && b == nil) || (a != nil && b != nil && *a == *b) }
	return eq(c.DisplayName, req.DisplayName) && eq(c.AvatarURL, req.AvatarURL)
}

// Redact sends an m.room.redaction. Beyond the auth rules (which in v3+
// rooms let any same-server user redact), the spec requires the sender to be
// the original sender or to hold the redact power level.
func (s *Service) Redact(ctx context.Context, roomID string, req EventRequest) (*storage.Event, error) {
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return nil, err
	}
	defer r.mu.Unlock()
	req.Type = spec.MRoomRedaction
	if req.TxnID != "" {
		if prev, err := s.txnEvent(ctx, roomID, req); err != nil || prev != nil {
			return prev, err
		}
	}
	if r.membership(req.Sender) != spec.Join {
		return nil, errNotInRoom
	}
	target, err := s.db.EventByID(ctx, req.Redacts)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return nil, err
	}
	if target != nil && target.RoomID == roomID && target.Sender != req.Sender {
		pl, err := r.powerLevels(nil)
		if err != nil {
			return nil, err
		}
		level, err := r.userLevel(nil, req.Sender)
		if err != nil {
			return nil, err
		}
		if level < pl.Redact {
			return nil, mautrix.MForbidden.WithMessage("You don't have permission to redact events of other users")
		}
	}
	content := map[string]any{}
	if len(req.Content) > 0 {
		if err := json.Unmarshal(req.Content, &content); err != nil {
			return nil, mautrix.MBadJSON.WithMessage("Redaction content must be an object")
		}
	}
	if RedactsInContent(r.version.Version()) {
		content["redacts"] = req.Redacts
	}
	req.Type = spec.MRoomRedaction
	req.Content = mustJSON(content)
	evs, err := s.sendLocked(ctx, r, []EventRequest{req}, nil)
	if err != nil {
		return nil, err
	}
	return evs[0], nil
}

// strippedStateTypes are the state events an invitee sees before joining.
var strippedStateTypes = []string{
	spec.MRoomCreate, spec.MRoomJoinRules, spec.MRoomName, "m.room.avatar", spec.MRoomCanonicalAlias,
	"m.room.encryption", spec.MRoomTopic,
}

// StrippedEvent is the stripped state format of invite_state.
type StrippedEvent struct {
	Content  json.RawMessage `json:"content"`
	Sender   string          `json:"sender"`
	StateKey string          `json:"state_key"`
	Type     string          `json:"type"`
}

// InviteState returns the stripped state shown to an invitee, with their invite event.
func (s *Service) InviteState(ctx context.Context, roomID, userID string) ([]StrippedEvent, error) {
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return nil, err
	}
	defer r.mu.Unlock()
	var out []StrippedEvent
	add := func(ev gomatrixserverlib.PDU) {
		if ev == nil {
			return
		}
		out = append(out, StrippedEvent{Content: ev.Content(), Sender: string(ev.SenderID()), StateKey: *ev.StateKey(), Type: ev.Type()})
	}
	for _, t := range strippedStateTypes {
		add(r.state[gomatrixserverlib.StateKeyTuple{EventType: t, StateKey: ""}])
	}
	add(r.state[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomMember, StateKey: userID}])
	return out, nil
}
