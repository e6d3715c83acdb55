package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"unicode"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// registerRooms registers the room endpoints: creation and membership here,
// state, sending, history, directory and search in their own files.
func (a *API) registerRooms(rt routes) {
	rt.client("/createRoom", a.authed(a.rateLimited(a.createRoom)), http.MethodPost)
	rt.client("/join/{roomIdOrAlias}", a.authed(a.rateLimited(a.joinRoomIDOrAlias)), http.MethodPost)
	rt.client("/knock/{roomIdOrAlias}", a.authed(a.rateLimited(a.knockRoom)), http.MethodPost)
	rt.client("/rooms/{roomId}/join", a.authed(a.rateLimited(a.joinRoomByID)), http.MethodPost)
	rt.client("/rooms/{roomId}/invite", a.authed(a.rateLimited(a.membershipAction(actionInvite))), http.MethodPost)
	rt.client("/rooms/{roomId}/leave", a.authed(a.rateLimited(a.membershipAction(actionLeave))), http.MethodPost)
	rt.client("/rooms/{roomId}/kick", a.authed(a.rateLimited(a.membershipAction(actionKick))), http.MethodPost)
	rt.client("/rooms/{roomId}/ban", a.authed(a.rateLimited(a.membershipAction(actionBan))), http.MethodPost)
	rt.client("/rooms/{roomId}/unban", a.authed(a.rateLimited(a.membershipAction(actionUnban))), http.MethodPost)
	rt.client("/rooms/{roomId}/forget", a.authed(a.rateLimited(a.forgetRoom)), http.MethodPost)
	rt.client("/joined_rooms", a.authed(a.joinedRooms), http.MethodGet)
	rt.client("/rooms/{roomId}/members", a.authed(a.roomMembers), http.MethodGet)
	rt.client("/rooms/{roomId}/joined_members", a.authed(a.joinedMembers), http.MethodGet)
	a.registerRoomState(rt)
	a.registerRoomMessages(rt)
	a.registerRoomDirectory(rt)
	a.registerRoomSearch(rt)
}

// roomVar returns a path variable, percent-decoded (the router matches the
// encoded path so that %2F inside a state key is not a separator).
func roomVar(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(mux.Vars(r)[name])
	if err != nil {
		return "", badParam("Invalid percent-encoding in %s", name)
	}
	return v, nil
}

// roomIDVar returns the {roomId} path variable, checked to be a room id.
func roomIDVar(r *http.Request) (string, error) {
	v, err := roomVar(r, "roomId")
	if err != nil {
		return "", err
	}
	if !validRoomID(v) {
		return "", badParam("Invalid room ID %q", v)
	}
	return v, nil
}

// eventIDVar returns the {eventId} path variable, checked to be an event id.
func eventIDVar(r *http.Request) (string, error) {
	v, err := roomVar(r, "eventId")
	if err != nil {
		return "", err
	}
	if len(v) < 2 || v[0] != '$' || len(v) > 255 {
		return "", badParam("Invalid event ID %q", v)
	}
	return v, nil
}

// validRoomID accepts "!opaque:server" and the domainless "!opaque" of room
// version 12.
func validRoomID(s string) bool {
	return len(s) >= 2 && s[0] == '!' && len(s) <= 255 && !strings.ContainsAny(s, " \x00")
}

// errNotInRoom is the answer for rooms the user may not act in or read,
// including rooms that do not exist: the same 403 for both, so a room's
// existence does not leak to outsiders (Synapse does the same).
var errNotInRoom = mautrix.MForbidden.WithMessage("You are not a member of this room")

// hideUnknownRoom turns the engine's M_NOT_FOUND for an unknown room into errNotInRoom.
func hideUnknownRoom(err error) error {
	if errors.Is(err, mautrix.MNotFound) {
		return errNotInRoom
	}
	return err
}

// roomReader says how much of a room a user may read: all of it (members
// and world_readable rooms) or the room as it was when they left.
type roomReader struct {
	roomID string
	// until is the last position the user may read (their leave or ban);
	// 0 means up to now.
	until storage.StreamPos
}

// stateAt is the position to read state at: until, or 0 for current state.
func (rr *roomReader) stateAt() storage.StreamPos { return rr.until }

// clampBackwards limits a backwards paging start to what the user may read.
func (rr *roomReader) clampBackwards(from storage.StreamPos) storage.StreamPos {
	if rr.until > 0 && from > rr.until {
		return rr.until
	}
	return from
}

// clampForwards limits a forwards paging end (0: none) to what the user may read.
func (rr *roomReader) clampForwards(to storage.StreamPos) storage.StreamPos {
	if rr.until > 0 && (to == 0 || to > rr.until) {
		return rr.until
	}
	return to
}

// readAccess decides whether userID may read a room: joined members read
// everything; anyone reads a world_readable room; with allowDeparted, a user
// who was joined and has since left (or been kicked or banned), and has not
// forgotten the room, reads it as it was at their departure. Everyone else,
// and every unknown room, gets errNotInRoom.
func (a *API) readAccess(ctx context.Context, roomID, userID string, allowDeparted bool) (*roomReader, error) {
	rr := &roomReader{roomID: roomID}
	m, err := a.db.MembershipOf(ctx, roomID, userID)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return nil, err
	}
	if m != nil && m.Membership == spec.Join {
		return rr, nil
	}
	worldReadable, err := a.rooms.WorldReadable(ctx, roomID)
	if err != nil {
		return nil, hideUnknownRoom(err)
	}
	if worldReadable {
		return rr, nil
	}
	if allowDeparted && m != nil && !m.Forgotten && (m.Membership == spec.Leave || m.Membership == spec.Ban) {
		joined, err := a.db.EverJoined(ctx, roomID, userID)
		if err != nil {
			return nil, err
		}
		if joined {
			rr.until = m.Pos
			return rr, nil
		}
	}
	return nil, errNotInRoom
}

// viewerOf is the rooms.Viewer of a request's session.
func viewerOf(s *Session) rooms.Viewer {
	return rooms.Viewer{UserID: s.UserID, DeviceID: s.DeviceID}
}

// isJSONObjectOrAbsent reports whether raw is absent, null or a JSON object.
func isJSONObjectOrAbsent(raw json.RawMessage) bool {
	t := strings.TrimSpace(string(raw))
	return t == "" || t == "null" || (gjson.Valid(t) && gjson.Parse(t).IsObject())
}

// validUserID checks a user id's syntax.
func validUserID(s string) bool {
	_, _, err := id.UserID(s).ParseAndValidateRelaxed()
	return err == nil
}

// validAliasLocalpart follows the spec (any code points except ':' and NUL)
// plus Synapse's refusal of whitespace.
func validAliasLocalpart(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r == ':' || r == 0 || unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

type createRoomBody struct {
	Visibility                string             `json:"visibility"`
	RoomAliasName             string             `json:"room_alias_name"`
	Name                      *string            `json:"name"`
	Topic                     *string            `json:"topic"`
	Invite                    []string           `json:"invite"`
	Invite3PID                []json.RawMessage  `json:"invite_3pid"`
	RoomVersion               string             `json:"room_version"`
	CreationContent           json.RawMessage    `json:"creation_content"`
	InitialState              []rooms.StateEvent `json:"initial_state"`
	Preset                    string             `json:"preset"`
	IsDirect                  bool               `json:"is_direct"`
	PowerLevelContentOverride json.RawMessage    `json:"power_level_content_override"`
}

// createRoom is POST /createRoom.
func (a *API) createRoom(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	var body createRoomBody
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	switch body.Visibility {
	case "", "public", "private":
	default:
		return badParam("visibility must be \"public\" or \"private\"")
	}
	switch body.Preset {
	case "", rooms.PresetPrivateChat, rooms.PresetPublicChat, rooms.PresetTrustedPrivateChat:
	default:
		return mautrix.MBadJSON.WithMessage("%q is not a valid preset", body.Preset)
	}
	if body.RoomAliasName != "" {
		if !validAliasLocalpart(body.RoomAliasName) {
			return badParam("Invalid characters in room alias")
		}
		if len("#"+body.RoomAliasName+":"+a.cfg.ServerName) > 255 {
			return badParam("Room alias is too long")
		}
		if err := a.checkAliasNamespace(s, "#"+body.RoomAliasName+":"+a.cfg.ServerName); err != nil {
			return err
		}
	}
	if len(body.Invite3PID) > 0 {
		return errNo3PIDInvites
	}
	invites := make([]string, 0, len(body.Invite))
	seen := map[string]bool{s.UserID: true}
	for _, u := range body.Invite {
		if !validUserID(u) {
			return badParam("Invalid user ID %q in invite", u)
		}
		if !seen[u] {
			seen[u] = true
			invites = append(invites, u)
		}
	}
	if !isJSONObjectOrAbsent(body.CreationContent) {
		return mautrix.MBadJSON.WithMessage("creation_content must be an object")
	}
	if !isJSONObjectOrAbsent(body.PowerLevelContentOverride) {
		return mautrix.MBadJSON.WithMessage("power_level_content_override must be an object")
	}
	for _, ev := range body.InitialState {
		if ev.Type == "" {
			return mautrix.MBadJSON.WithMessage("initial_state events need a type")
		}
		if !isJSONObjectOrAbsent(ev.Content) || len(strings.TrimSpace(string(ev.Content))) == 0 {
			return mautrix.MBadJSON.WithMessage("initial_state content of %s must be an object", ev.Type)
		}
	}
	u, err := a.db.UserByID(r.Context(), s.UserID)
	if err != nil {
		return err
	}
	req := rooms.CreateRoomRequest{
		Creator:            s.UserID,
		RoomVersion:        body.RoomVersion,
		Preset:             body.Preset,
		Public:             body.Visibility == "public",
		AliasLocalpart:     body.RoomAliasName,
		Name:               body.Name,
		Topic:              body.Topic,
		Invite:             invites,
		InitialState:       body.InitialState,
		IsDirect:           body.IsDirect,
		CreatorDisplayName: u.DisplayName,
		CreatorAvatarURL:   u.AvatarURL,
	}
	if strings.TrimSpace(string(body.CreationContent)) != "null" {
		req.CreationContent = body.CreationContent
	}
	if strings.TrimSpace(string(body.PowerLevelContentOverride)) != "null" {
		req.PowerLevelOverride = body.PowerLevelContentOverride
	}
	roomID, err := a.rooms.CreateRoom(r.Context(), req)
	if err != nil {
		return err
	}
	resp := map[string]string{"room_id": roomID}
	if body.RoomAliasName != "" {
		resp["room_alias"] = "#" + body.RoomAliasName + ":" + a.cfg.ServerName
	}
	return writeJSON(w, http.StatusOK, resp)
}

type membershipBody struct {
	UserID string `json:"user_id"`
	Reason string `json:"reason"`
	// Medium and Address make an /invite a third-party invite.
	Medium  string `json:"medium"`
	Address string `json:"address"`
}

// errNo3PIDInvites answers third-party (email, phone) invites: there is no
// identity server to deliver them.
var errNo3PIDInvites = mautrix.MForbidden.WithMessage("Third-party invites are not supported on this server")

// resolveRoomIDOrAlias turns the {roomIdOrAlias} of /join and /knock into a
// room id. Only local aliases resolve: there is no federation.
func (a *API) resolveRoomIDOrAlias(r *http.Request) (string, error) {
	v, err := roomVar(r, "roomIdOrAlias")
	if err != nil {
		return "", err
	}
	switch {
	case strings.HasPrefix(v, "!"):
		if !validRoomID(v) {
			return "", badParam("Invalid room ID %q", v)
		}
		return v, nil
	case strings.HasPrefix(v, "#"):
		if _, _, ok := splitAlias(v); !ok {
			return "", badParam("Invalid room alias %q", v)
		}
		al, err := a.lookupAlias(r.Context(), v)
		if errors.Is(err, storage.ErrNotFound) {
			return "", mautrix.MNotFound.WithMessage("Room alias %s not found", v)
		} else if err != nil {
			return "", err
		}
		return al.RoomID, nil
	default:
		return "", badParam("%q is neither a room ID nor a room alias", v)
	}
}

// join makes the session's user join roomID with their global profile.
// An unknown room is 404 M_NOT_FOUND here (nothing to hide: there is nothing to join).
func (a *API) join(ctx context.Context, s *Session, roomID string, body membershipBody) error {
	if s.IsGuest {
		// The auth rules do not know guests; the spec's m.room.guest_access does.
		ev, err := a.rooms.CurrentStateEvent(ctx, roomID, "m.room.guest_access", "")
		if err != nil {
			return err
		}
		if ev == nil || gjson.GetBytes(ev.Content(), "guest_access").Str != "can_join" {
			return mautrix.MForbidden.WithMessage("Guest access is not allowed in this room")
		}
	}
	u, err := a.db.UserByID(ctx, s.UserID)
	if err != nil {
		return err
	}
	_, err = a.rooms.ChangeMembership(ctx, roomID, rooms.MembershipRequest{
		Sender: s.UserID, Target: s.UserID, Membership: spec.Join, Reason: body.Reason,
		DisplayName: u.DisplayName, AvatarURL: u.AvatarURL,
	})
	return err
}

// joinRoomIDOrAlias is POST /join/{roomIdOrAlias}.
func (a *API) joinRoomIDOrAlias(w http.ResponseWriter, r *http.Request) error {
	return a.joinVia(w, r, a.resolveRoomIDOrAlias)
}

// joinRoomByID is POST /rooms/{roomId}/join.
func (a *API) joinRoomByID(w http.ResponseWriter, r *http.Request) error {
	return a.joinVia(w, r, roomIDVar)
}

// joinVia joins the room that resolve names in the request.
func (a *API) joinVia(w http.ResponseWriter, r *http.Request, resolve func(*http.Request) (string, error)) error {
	roomID, err := resolve(r)
	if err != nil {
		return err
	}
	var body membershipBody
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if err := a.join(r.Context(), sessionFrom(r.Context()), roomID, body); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
}

// knockRoom is POST /knock/{roomIdOrAlias}.
func (a *API) knockRoom(w http.ResponseWriter, r *http.Request) error {
	roomID, err := a.resolveRoomIDOrAlias(r)
	if err != nil {
		return err
	}
	var body membershipBody
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	s := sessionFrom(r.Context())
	if _, err := a.rooms.ChangeMembership(r.Context(), roomID, rooms.MembershipRequest{
		Sender: s.UserID, Target: s.UserID, Membership: spec.Knock, Reason: body.Reason,
	}); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
}

type membershipActionKind int

const (
	actionInvite membershipActionKind = iota
	actionLeave
	actionKick
	actionBan
	actionUnban
)

// membershipAction serves /invite, /leave, /kick, /ban and /unban, which
// differ only in the membership they send and the checks before it. The auth
// rules (power levels, who may do what) are the engine's; the checks here
// are the ones the auth rules cannot express.
func (a *API) membershipAction(kind membershipActionKind) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		s := sessionFrom(r.Context())
		roomID, err := roomIDVar(r)
		if err != nil {
			return err
		}
		var body membershipBody
		if err := decodeJSON(r, &body); err != nil {
			return err
		}
		target := body.UserID
		if kind == actionLeave {
			target = s.UserID
		} else {
			if target == "" {
				if kind == actionInvite && (body.Medium != "" || body.Address != "") {
					return errNo3PIDInvites
				}
				return missingParam("Missing user_id")
			}
			if !validUserID(target) {
				return badParam("Invalid user ID %q", target)
			}
		}
		// Acting on someone else needs the sender in the room, checked before
		// anything about the target is said. (Leaving is the engine's call:
		// a second leave, or leaving an invite, is fine.)
		if kind != actionLeave {
			if own, err := a.rooms.Membership(r.Context(), roomID, s.UserID); err != nil {
				return hideUnknownRoom(err)
			} else if own != spec.Join {
				return mautrix.MForbidden.WithMessage("You are not in this room")
			}
		}
		current, err := a.rooms.Membership(r.Context(), roomID, target)
		if err != nil {
			return hideUnknownRoom(err)
		}
		membership := spec.Leave
		switch kind {
		case actionInvite:
			membership = spec.Invite
		case actionBan:
			membership = spec.Ban
		case actionKick:
			if current != spec.Join && current != spec.Invite && current != spec.Knock {
				return mautrix.MForbidden.WithMessage("%s is not in the room", target)
			}
		case actionUnban:
			if current != spec.Ban {
				return mautrix.MBadState.WithStatus(http.StatusForbidden).WithMessage("Cannot unban %s: not banned", target)
			}
		}
		if _, err := a.rooms.ChangeMembership(r.Context(), roomID, rooms.MembershipRequest{
			Sender: s.UserID, Target: target, Membership: membership, Reason: body.Reason,
		}); err != nil {
			return hideUnknownRoom(err)
		}
		return writeJSON(w, http.StatusOK, empty)
	}
}

// forgetRoom is POST /rooms/{roomId}/forget: allowed once the user is no
// longer in the room; a room never joined is a no-op, as in Synapse.
func (a *API) forgetRoom(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	m, err := a.db.MembershipOf(r.Context(), roomID, s.UserID)
	if errors.Is(err, storage.ErrNotFound) {
		return writeJSON(w, http.StatusOK, empty)
	} else if err != nil {
		return err
	}
	switch m.Membership {
	case spec.Join, spec.Invite, spec.Knock:
		return mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("User %s is in room %s", s.UserID, roomID)
	}
	if err := a.db.ForgetRoom(r.Context(), roomID, s.UserID); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// joinedRooms is GET /joined_rooms.
func (a *API) joinedRooms(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ms, err := a.db.MembershipsOfUser(r.Context(), s.UserID, spec.Join)
	if err != nil {
		return err
	}
	ids := make([]string, 0, len(ms))
	for _, m := range ms {
		ids = append(ids, m.RoomID)
	}
	return writeJSON(w, http.StatusOK, map[string]any{"joined_rooms": ids})
}

// memberEvents returns the room's m.room.member events as the reader may see
// them: current, or at `at` (0: the reader's own limit).
func (a *API) memberEvents(ctx context.Context, rr *roomReader, at storage.StreamPos) ([]*storage.Event, error) {
	if rr.until > 0 && (at == 0 || at > rr.until) {
		at = rr.until
	}
	if at == 0 {
		return a.db.CurrentStateOfType(ctx, rr.roomID, spec.MRoomMember)
	}
	return a.db.StateOfTypeAt(ctx, rr.roomID, spec.MRoomMember, at)
}

var validMemberships = map[string]bool{spec.Join: true, spec.Invite: true, spec.Leave: true, spec.Ban: true, spec.Knock: true}

// roomMembers is GET /rooms/{roomId}/members.
func (a *API) roomMembers(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	var at storage.StreamPos
	if tok := q.Get("at"); tok != "" {
		if at, err = rooms.ParseStreamToken(tok); err != nil {
			return badParam("Invalid at token")
		}
		if at == 0 {
			at = -1 // before the first event: nobody
		}
	}
	only, not := q.Get("membership"), q.Get("not_membership")
	if (only != "" && !validMemberships[only]) || (not != "" && !validMemberships[not]) {
		return badParam("Unknown membership value")
	}
	rr, err := a.readAccess(r.Context(), roomID, s.UserID, true)
	if err != nil {
		return err
	}
	var evs []*storage.Event
	if at >= 0 {
		if evs, err = a.memberEvents(r.Context(), rr, at); err != nil {
			return err
		}
	}
	chunk := make([]rooms.ClientEvent, 0, len(evs))
	for _, e := range evs {
		m := ""
		if e.Membership != nil {
			m = *e.Membership
		}
		if (only != "" && m != only) || (not != "" && m == not) {
			continue
		}
		chunk = append(chunk, rooms.ToClientEvent(e, viewerOf(s), rooms.FormatOptions{}))
	}
	return writeJSON(w, http.StatusOK, map[string]any{"chunk": chunk})
}

type joinedMember struct {
	DisplayName *string `json:"display_name,omitempty"`
	AvatarURL   *string `json:"avatar_url,omitempty"`
}

// joinedMembers is GET /rooms/{roomId}/joined_members.
func (a *API) joinedMembers(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	rr, err := a.readAccess(r.Context(), roomID, s.UserID, true)
	if err != nil {
		return err
	}
	evs, err := a.memberEvents(r.Context(), rr, 0)
	if err != nil {
		return err
	}
	joined := make(map[string]joinedMember)
	for _, e := range evs {
		if e.Membership == nil || *e.Membership != spec.Join || e.StateKey == nil {
			continue
		}
		var c struct {
			DisplayName *string `json:"displayname"`
			AvatarURL   *string `json:"avatar_url"`
		}
		_ = json.Unmarshal([]byte(gjson.GetBytes(e.PDUJSON, "content").Raw), &c)
		joined[*e.StateKey] = joinedMember{DisplayName: c.DisplayName, AvatarURL: c.AvatarURL}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"joined": joined})
}
