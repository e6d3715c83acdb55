package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

// Room operations of the admin API (package adminapi): block checks,
// removing everyone, purging a room or part of its history, granting power
// and force-joining. Each holds the room lock for its whole run, so no event
// of the room is built or committed in between.

// errRoomBlocked is Synapse's answer for joining (or inviting to) a blocked room.
var errRoomBlocked = mautrix.MForbidden.WithMessage("This room has been blocked on this server")

// checkNotBlocked refuses a room on the server's block list.
func (s *Service) checkNotBlocked(ctx context.Context, roomID string) error {
	_, err := s.db.RoomBlockedBy(ctx, roomID)
	if err == nil {
		return errRoomBlocked
	}
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	return err
}

// isLocal reports whether a user id belongs to this server.
func (s *Service) isLocal(userID string) bool {
	_, server, ok := strings.Cut(userID, ":")
	return ok && server == string(s.serverName)
}

// membersWith lists the users whose current membership is one of kinds, sorted.
func (r *room) membersWith(kinds ...string) []string {
	var out []string
	for key, ev := range r.state {
		if key.EventType != spec.MRoomMember {
			continue
		}
		if m, _ := ev.Membership(); slices.Contains(kinds, m) {
			out = append(out, key.StateKey)
		}
	}
	sort.Strings(out)
	return out
}

// RemoveLocalMembers makes every local user who is joined to, invited to or
// knocking on a room leave it (each sends their own leave, as Synapse's room
// shutdown does: it needs no power). Users whose leave fails are returned
// in failed; the error is only for the room itself (e.g. unknown).
func (s *Service) RemoveLocalMembers(ctx context.Context, roomID string) (removed, failed []string, err error) {
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return nil, nil, err
	}
	defer r.mu.Unlock()
	removed, failed = []string{}, []string{}
	for _, u := range r.membersWith(spec.Join, spec.Invite, spec.Knock) {
		if !s.isLocal(u) {
			continue
		}
		_, err := s.sendLocked(ctx, r, []EventRequest{{
			Sender: u, Type: spec.MRoomMember, StateKey: StrPtr(u), Content: mustJSON(map[string]any{"membership": spec.Leave}),
		}}, nil)
		if err != nil {
			s.log.WarnContext(ctx, "room shutdown: removing member failed", "room_id", roomID, "user_id", u, "err", err)
			failed = append(failed, u)
			continue
		}
		removed = append(removed, u)
	}
	return removed, failed, nil
}

// errUsersStillJoined refuses a purge while someone is still in the room.
var errUsersStillJoined = mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("Cannot purge room: users are still joined to it")

// PurgeRoom deletes a room and everything in it from the database (see
// storage.Tx.PurgeRoom) and from memory. Unless force, it refuses while any
// user is still joined. It returns how many events were deleted.
func (s *Service) PurgeRoom(ctx context.Context, roomID string, force bool) (int64, error) {
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return 0, err
	}
	defer r.mu.Unlock()
	joined := r.membersWith(spec.Join)
	if len(joined) > 0 && !force {
		return 0, errUsersStillJoined
	}
	var deleted int64
	err = s.db.Write(ctx, func(tx *storage.Tx) error {
		var err error
		if deleted, err = tx.PurgeRoom(ctx, roomID); err != nil {
			return err
		}
		tx.OnCommit(func() {
			s.mu.Lock()
			if s.rooms[roomID] == r {
				delete(s.rooms, roomID)
			}
			s.mu.Unlock()
			// Anyone still waiting for this entry's lock reloads it and
			// finds no room.
			r.loaded = false
			r.state = nil
			r.recent.mu.Lock()
			r.recent.events, r.recent.start = nil, 0
			r.recent.mu.Unlock()
			for _, u := range joined {
				s.notifier.SetJoined(roomID, u, false)
			}
		})
		return nil
	})
	if err != nil {
		r.loaded = false // reload from whatever the database now holds
		return 0, err
	}
	return deleted, nil
}

// PurgeHistory deletes a room's non-state events before position before
// (state is kept) and drops them from the in-memory ring too. It returns
// how many events were deleted.
func (s *Service) PurgeHistory(ctx context.Context, roomID string, before storage.StreamPos) (int64, error) {
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return 0, err
	}
	defer r.mu.Unlock()
	var deleted int64
	err = s.db.Write(ctx, func(tx *storage.Tx) error {
		var err error
		if deleted, err = tx.PurgeHistory(ctx, roomID, before); err != nil {
			return err
		}
		tx.OnCommit(func() { r.recent.dropStateless(before) })
		return nil
	})
	return deleted, err
}

// dropStateless removes the non-state events before pos from the ring.
func (re *recentEvents) dropStateless(before storage.StreamPos) {
	re.mu.Lock()
	defer re.mu.Unlock()
	kept := re.events[:0]
	for _, e := range re.events {
		if e.Pos >= before || e.StateKey != nil {
			kept = append(kept, e)
		}
	}
	clear(re.events[len(kept):])
	re.events = kept
}

var (
	errNoLocalAdmin      = mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("No local admin user in room")
	errNoPowerToPromote  = mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("No local admin user in room with power to update power levels.")
	errNobodyCanInvite   = mautrix.MForbidden.WithMessage("No local user in the room has the power to invite")
	errRoomHasNoCreation = mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("Server not in room")
)

// powerfulLocalMembers lists the room's joined local users who have power,
// most powerful first: v12 creators, then the users of m.room.power_levels
// by level (ties by user id).
func (s *Service) powerfulLocalMembers(r *room) ([]string, map[string]int64, error) {
	levels := map[string]int64{}
	var out []string
	if r.version.PrivilegedCreators() {
		create := r.state[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate, StateKey: ""}]
		if create != nil {
			var c struct {
				AdditionalCreators []string `json:"additional_creators"`
			}
			_ = json.Unmarshal(create.Content(), &c)
			for _, u := range append([]string{string(create.SenderID())}, c.AdditionalCreators...) {
				if s.isLocal(u) && r.membership(u) == spec.Join && !slices.Contains(out, u) {
					out = append(out, u)
					levels[u] = 1 << 53
				}
			}
		}
	}
	pl, err := r.powerLevels(nil)
	if err != nil {
		return nil, nil, err
	}
	var ranked []string
	for u, lvl := range pl.Users {
		if s.isLocal(u) && r.membership(u) == spec.Join && !slices.Contains(out, u) {
			ranked = append(ranked, u)
			levels[u] = lvl
		}
	}
	sort.Slice(ranked, func(i, j int) bool {
		if levels[ranked[i]] != levels[ranked[j]] {
			return levels[ranked[i]] > levels[ranked[j]]
		}
		return ranked[i] < ranked[j]
	})
	return append(out, ranked...), levels, nil
}

// MakeRoomAdmin gives userID the power of the most powerful joined local
// user of the room (sending m.room.power_levels as that user) and, when
// userID is neither joined nor invited and the room is not public, invites
// them: Synapse's make_room_admin.
func (s *Service) MakeRoomAdmin(ctx context.Context, roomID, userID string) error {
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return err
	}
	defer r.mu.Unlock()
	if r.state[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate, StateKey: ""}] == nil {
		return errRoomHasNoCreation
	}
	admins, levels, err := s.powerfulLocalMembers(r)
	if err != nil {
		return err
	}
	if len(admins) == 0 {
		return errNoLocalAdmin
	}
	granter := admins[0]
	content := map[string]any{}
	if plEv := r.state[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomPowerLevels, StateKey: ""}]; plEv != nil {
		if err := json.Unmarshal(plEv.Content(), &content); err != nil {
			return errNoPowerToPromote
		}
	}
	users := map[string]any{}
	if u, ok := content["users"].(map[string]any); ok {
		users = u
	}
	level := levels[granter]
	if level >= 1<<53 {
		level = 100 // a v12 creator is not in the users map: give the usual admin level
	}
	users[userID] = level
	content["users"] = users
	if _, err := s.sendLocked(ctx, r, []EventRequest{{
		Sender: granter, Type: spec.MRoomPowerLevels, StateKey: StrPtr(""), Content: mustJSON(content),
	}}, nil); err != nil {
		var re mautrix.RespError
		if errors.As(err, &re) && re.ErrCode == mautrix.MForbidden.ErrCode {
			return errNoPowerToPromote
		}
		return err
	}
	switch r.membership(userID) {
	case spec.Join, spec.Invite:
		return nil
	}
	if r.joinRule() == spec.Public {
		return nil
	}
	_, err = s.sendLocked(ctx, r, []EventRequest{{
		Sender: granter, Type: spec.MRoomMember, StateKey: StrPtr(userID), Content: mustJSON(map[string]any{"membership": spec.Invite}),
	}}, nil)
	return err
}

// joinRule is the room's current join rule ("invite" when unset).
func (r *room) joinRule() string {
	ev := r.state[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomJoinRules, StateKey: ""}]
	if ev == nil {
		return spec.Invite
	}
	var c struct {
		JoinRule string `json:"join_rule"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	return c.JoinRule
}

// ForceJoin puts a local user into a room on an administrator's behalf.
// In a room that is not public the user is first invited (unless already
// invited) by preferredInviter when they are joined and may invite, else by
// the most powerful joined local user who may; then the user joins with
// their profile. Blocked rooms are refused.
func (s *Service) ForceJoin(ctx context.Context, roomID, userID, preferredInviter string, displayName, avatarURL *string) error {
	if err := s.checkNotBlocked(ctx, roomID); err != nil {
		return err
	}
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return err
	}
	defer r.mu.Unlock()
	join := map[string]any{"membership": spec.Join}
	if displayName != nil {
		join["displayname"] = *displayName
	}
	if avatarURL != nil {
		join["avatar_url"] = *avatarURL
	}
	var reqs []EventRequest
	current := r.membership(userID)
	if current == spec.Join {
		return nil
	}
	if r.joinRule() != spec.Public && current != spec.Invite {
		inviter, err := s.inviterFor(r, preferredInviter)
		if err != nil {
			return err
		}
		reqs = append(reqs, EventRequest{Sender: inviter, Type: spec.MRoomMember, StateKey: StrPtr(userID),
			Content: mustJSON(map[string]any{"membership": spec.Invite})})
	}
	reqs = append(reqs, EventRequest{Sender: userID, Type: spec.MRoomMember, StateKey: StrPtr(userID), Content: mustJSON(join)})
	_, err = s.sendLocked(ctx, r, reqs, nil)
	return err
}

// inviterFor picks who sends a force-join's invite.
func (s *Service) inviterFor(r *room, preferred string) (string, error) {
	pl, err := r.powerLevels(nil)
	if err != nil {
		return "", err
	}
	canInvite := func(u string) bool {
		lvl, err := r.userLevel(nil, u)
		return err == nil && lvl >= pl.Invite
	}
	if preferred != "" && r.membership(preferred) == spec.Join && canInvite(preferred) {
		return preferred, nil
	}
	members, _, err := s.powerfulLocalMembers(r)
	if err != nil {
		return "", err
	}
	for _, u := range members {
		if canInvite(u) {
			return u, nil
		}
	}
	// Users without an entry in the users map have users_default.
	for _, u := range r.membersWith(spec.Join) {
		if s.isLocal(u) && canInvite(u) {
			return u, nil
		}
	}
	return "", errNobodyCanInvite
}
