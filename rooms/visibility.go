package rooms

import (
	"context"
	"errors"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/agentspace/agentspace/storage"
)

// History visibility values.
const (
	VisibilityWorldReadable = "world_readable"
	VisibilityShared        = "shared"
	VisibilityInvited       = "invited"
	VisibilityJoined        = "joined"
)

type posValue struct {
	pos   storage.StreamPos
	value string
}

// Visibility decides which events of one room one user may see, following
// the spec's algorithm (client-server API, "History visibility").
type Visibility struct {
	s      *Service
	roomID string
	userID string
	// current membership, for the fast path: a joined user sees everything
	// after their latest join.
	current *storage.Membership
	loaded  bool
	hv      []posValue // m.room.history_visibility changes, oldest first
	member  []posValue // the user's membership changes, oldest first
}

// VisibilityFor prepares visibility checks for a user in a room.
func (s *Service) VisibilityFor(ctx context.Context, roomID, userID string) (*Visibility, error) {
	m, err := s.db.MembershipOf(ctx, roomID, userID)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return nil, err
	}
	return &Visibility{s: s, roomID: roomID, userID: userID, current: m}, nil
}

// VisibilityWith is VisibilityFor when the caller already knows the user's
// current membership (nil: never a member).
func (s *Service) VisibilityWith(roomID, userID string, current *storage.Membership) *Visibility {
	return &Visibility{s: s, roomID: roomID, userID: userID, current: current}
}

// Membership is the user's current membership ("" if never a member).
func (v *Visibility) Membership() string {
	if v.current == nil {
		return ""
	}
	return v.current.Membership
}

func (v *Visibility) load(ctx context.Context) error {
	if v.loaded {
		return nil
	}
	hvs, err := v.s.db.StateEventsOfType(ctx, v.roomID, spec.MRoomHistoryVisibility, StrPtr(""))
	if err != nil {
		return err
	}
	for _, e := range hvs {
		val := gjson.GetBytes(e.PDUJSON, "content.history_visibility").Str
		if val == "" {
			val = VisibilityShared
		}
		v.hv = append(v.hv, posValue{e.Pos, val})
	}
	ms, err := v.s.db.StateEventsOfType(ctx, v.roomID, spec.MRoomMember, StrPtr(v.userID))
	if err != nil {
		return err
	}
	for _, e := range ms {
		m := ""
		if e.Membership != nil {
			m = *e.Membership
		}
		v.member = append(v.member, posValue{e.Pos, m})
	}
	v.loaded = true
	return nil
}

// valueBefore returns the latest value set strictly before pos.
func valueBefore(list []posValue, pos storage.StreamPos, def string) string {
	val := def
	for _, pv := range list {
		if pv.pos >= pos {
			break
		}
		val = pv.value
	}
	return val
}

// CanSee reports whether the user may see e.
func (v *Visibility) CanSee(ctx context.Context, e *storage.Event) (bool, error) {
	if v.current != nil && v.current.Membership == spec.Join && e.Pos > v.current.Pos {
		return true, nil
	}
	if err := v.load(ctx); err != nil {
		return false, err
	}
	hv := valueBefore(v.hv, e.Pos, VisibilityShared)
	if hv == VisibilityWorldReadable {
		return true, nil
	}
	membership := valueBefore(v.member, e.Pos, "")
	if e.Type == spec.MRoomMember && e.StateKey != nil && *e.StateKey == v.userID && e.Membership != nil {
		membership = *e.Membership // one's own membership change is seen as its new value
	}
	if membership == spec.Join {
		return true, nil
	}
	if hv == VisibilityShared {
		for _, m := range v.member {
			if m.pos >= e.Pos && m.value == spec.Join {
				return true, nil
			}
		}
	}
	if membership == spec.Invite && hv == VisibilityInvited {
		return true, nil
	}
	return false, nil
}

// Filter keeps the events the user may see.
func (v *Visibility) Filter(ctx context.Context, evs []*storage.Event) ([]*storage.Event, error) {
	out := evs[:0:0]
	for _, e := range evs {
		ok, err := v.CanSee(ctx, e)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, e)
		}
	}
	return out, nil
}

// WorldReadable reports whether the room's current history visibility is world_readable.
func (s *Service) WorldReadable(ctx context.Context, roomID string) (bool, error) {
	ev, err := s.CurrentStateEvent(ctx, roomID, spec.MRoomHistoryVisibility, "")
	if err != nil || ev == nil {
		return false, err
	}
	return gjson.GetBytes(ev.Content(), "history_visibility").Str == VisibilityWorldReadable, nil
}
