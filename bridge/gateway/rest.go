package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"unicode"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// handler is an HTTP handler that returns its error for WriteError.
type handler func(w http.ResponseWriter, r *http.Request, c *Caller) error

// APIHandler serves the REST API under /api:
//
//	POST   /api/rooms/{room}/messages   {content, type?, txn_id?} → {event_id}
//	GET    /api/rooms                   → {rooms: [...]}
//	POST   /api/rooms                   {name, public?, topic?, invite?} → {room_id, alias?}
//	PATCH  /api/rooms/{room}            {name?, topic?}            (room or server admins)
//	DELETE /api/rooms/{room}                                       (server admins)
//	POST   /api/rooms/{room}/join, /leave
//	POST   /api/tokens/revoke           {user_id?}
//
// {room} is a room id, an alias or a bare alias name. Every error is a
// Matrix error ({"errcode","error"}).
func (g *Gateway) APIHandler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, methods map[string]handler) {
		mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h, ok := methods[r.Method]
			if !ok {
				allowed := make([]string, 0, len(methods))
				for m := range methods {
					allowed = append(allowed, m)
				}
				slices.Sort(allowed)
				w.Header().Set("Allow", strings.Join(allowed, ", "))
				g.d.WriteError(w, r, mautrix.MUnrecognized.WithStatus(http.StatusMethodNotAllowed).WithMessage("Method not allowed"))
				return
			}
			c, err := g.d.Authenticate(r, "")
			if err == nil {
				err = h(w, r, c)
			}
			if err != nil {
				g.d.WriteError(w, r, err)
			}
		}))
	}
	// What writes to rooms draws from the caller's rate limit, as over Matrix.
	route("/api/rooms", map[string]handler{http.MethodGet: g.listRooms, http.MethodPost: g.limited(g.createRoom)})
	route("/api/rooms/{room}", map[string]handler{http.MethodPatch: g.limited(g.updateRoom), http.MethodDelete: g.deleteRoom})
	route("/api/rooms/{room}/messages", map[string]handler{http.MethodPost: g.limited(g.postMessage)})
	route("/api/rooms/{room}/join", map[string]handler{http.MethodPost: g.limited(g.joinREST)})
	route("/api/rooms/{room}/leave", map[string]handler{http.MethodPost: g.limited(g.leaveREST)})
	route("/api/tokens/revoke", map[string]handler{http.MethodPost: g.revokeTokens})
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.d.WriteError(w, r, mautrix.MUnrecognized.WithStatus(http.StatusNotFound).WithMessage("Unrecognized request"))
	}))
	return mux
}

// limited applies the caller's rate limit before h.
func (g *Gateway) limited(h handler) handler {
	return func(w http.ResponseWriter, r *http.Request, c *Caller) error {
		if g.d.RateLimit != nil {
			if err := g.d.RateLimit(c); err != nil {
				return err
			}
		}
		return h(w, r, c)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(b)
	return err
}

// decodeJSON reads a JSON object body (empty: {}) into v: M_NOT_JSON when
// it is not JSON, M_BAD_JSON when it has the wrong shape.
func decodeJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var maxBytes *http.MaxBytesError
		if errors.As(err, &maxBytes) {
			return mautrix.MTooLarge.WithMessage("Request body is larger than %d bytes", maxBytes.Limit)
		}
		return mautrix.MNotJSON.WithMessage("Could not read request body")
	}
	return decodeJSONBytes(body, v)
}

func decodeJSONBytes(body []byte, v any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		body = []byte("{}")
	}
	if !json.Valid(body) {
		return mautrix.MNotJSON.WithMessage("Content not JSON.")
	}
	if body[0] != '{' {
		return mautrix.MBadJSON.WithMessage("Body must be a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return mautrix.MBadJSON.WithMessage("Invalid type for field %q: expected %s", typeErr.Field, typeErr.Type)
		}
		return mautrix.MBadJSON.WithMessage("Invalid JSON: %v", err)
	}
	return nil
}

// msgTypes are the message types the gateway sends (text only).
var msgTypes = []string{"m.text", "m.notice", "m.emote"}

// messageRequest builds the m.room.message a client asked for.
func messageRequest(c *Caller, content, msgType, txnID string) (rooms.EventRequest, error) {
	if msgType == "" {
		msgType = "m.text"
	}
	if !slices.Contains(msgTypes, msgType) {
		return rooms.EventRequest{}, mautrix.MInvalidParam.WithMessage("type must be one of %s", strings.Join(msgTypes, ", "))
	}
	if content == "" {
		return rooms.EventRequest{}, errMissingParam.WithMessage("content must be a non-empty string")
	}
	req := rooms.EventRequest{Sender: c.UserID, Type: "m.room.message",
		Content: mustJSON(map[string]string{"msgtype": msgType, "body": content})}
	if txnID != "" {
		req.TxnID, req.DeviceID = "gw-"+txnID, c.DeviceID
	}
	return req, nil
}

// postMessage is POST /api/rooms/{room}/messages {"content": "...",
// "type"?: "m.text", "txn_id"?: "..."}: posts as the token's user. The same
// txn_id from the same device returns the first event instead of posting
// twice.
func (g *Gateway) postMessage(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var body struct {
		Content string `json:"content"`
		Type    string `json:"type"`
		TxnID   string `json:"txn_id"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	roomID, err := g.resolveRoom(r.Context(), r.PathValue("room"))
	if err != nil {
		return err
	}
	req, err := messageRequest(c, body.Content, body.Type, body.TxnID)
	if err != nil {
		return err
	}
	ev, err := g.send(r.Context(), c, roomID, req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"event_id": ev.EventID, "room_id": roomID})
}

// roomInfo is one entry of GET /api/rooms.
type roomInfo struct {
	RoomID        string `json:"room_id"`
	Alias         string `json:"alias,omitempty"`
	Name          string `json:"name,omitempty"`
	Topic         string `json:"topic,omitempty"`
	Public        bool   `json:"public"`
	WorldReadable bool   `json:"world_readable"`
	// Membership is the caller's: join, invite, or "" (a public room they
	// have not joined).
	Membership    string `json:"membership"`
	JoinedMembers int    `json:"joined_members"`
}

// listRooms is GET /api/rooms: the rooms the caller is joined or invited
// to, and the rooms published in the directory.
func (g *Gateway) listRooms(w http.ResponseWriter, r *http.Request, c *Caller) error {
	ctx := r.Context()
	mine, err := g.d.DB.MembershipsOfUser(ctx, c.UserID, spec.Join, spec.Invite)
	if err != nil {
		return err
	}
	published, err := g.d.DB.PublishedRoomIDs(ctx)
	if err != nil {
		return err
	}
	membership := map[string]string{}
	var ids []string
	for _, m := range mine {
		membership[m.RoomID] = m.Membership
		ids = append(ids, m.RoomID)
	}
	for _, id := range published {
		if _, ok := membership[id]; !ok {
			ids = append(ids, id)
		}
	}
	out := make([]roomInfo, 0, len(ids))
	for _, id := range ids {
		info, err := g.roomInfo(ctx, id)
		if errors.Is(err, mautrix.MNotFound) || errors.Is(err, storage.ErrNotFound) {
			continue // purged meanwhile
		} else if err != nil {
			return err
		}
		info.Membership = membership[id]
		if info.Membership == "" && !info.Public && !info.WorldReadable {
			continue
		}
		out = append(out, *info)
	}
	return writeJSON(w, http.StatusOK, map[string]any{"rooms": out})
}

func (g *Gateway) roomInfo(ctx context.Context, roomID string) (*roomInfo, error) {
	state, err := g.d.Rooms.CurrentStateSnapshot(ctx, roomID)
	if err != nil {
		return nil, err
	}
	str := func(evType, path string) string {
		for k, ev := range state {
			if k.EventType == evType && k.StateKey == "" {
				return gjson.GetBytes(ev.Content(), path).Str
			}
		}
		return ""
	}
	info := &roomInfo{
		RoomID: roomID, Alias: str(spec.MRoomCanonicalAlias, "alias"), Name: str(spec.MRoomName, "name"),
		Topic: str(spec.MRoomTopic, "topic"), Public: str(spec.MRoomJoinRules, "join_rule") == spec.Public,
		WorldReadable: str(spec.MRoomHistoryVisibility, "history_visibility") == rooms.VisibilityWorldReadable,
		JoinedMembers: len(g.d.Rooms.Notifier().JoinedMembers(roomID)),
	}
	return info, nil
}

// validAliasName reports whether name can be an alias localpart.
func validAliasName(name string) bool {
	return name != "" && len(name) <= 200 && !strings.ContainsFunc(name, func(r rune) bool {
		return r == ':' || r == '#' || unicode.IsSpace(r) || unicode.IsControl(r)
	})
}

// createRoom is POST /api/rooms {"name", "public"?, "topic"?, "invite"?}:
// public rooms are observer rooms with the alias #name (agents post,
// everyone may read); private rooms are invite-only.
func (g *Gateway) createRoom(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var body struct {
		Name   string   `json:"name"`
		Public bool     `json:"public"`
		Topic  string   `json:"topic"`
		Invite []string `json:"invite"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if c.IsGuest {
		return mautrix.MForbidden.WithMessage("Guests cannot create rooms")
	}
	body.Name = strings.TrimSpace(body.Name)
	if body.Name == "" || len(body.Name) > 255 {
		return mautrix.MInvalidParam.WithMessage("name must be 1 to 255 bytes")
	}
	for _, u := range body.Invite {
		if !strings.HasPrefix(u, "@") || !strings.Contains(u, ":") {
			return mautrix.MInvalidParam.WithMessage("invite: %q is not a user id", truncate(u, 80))
		}
	}
	ctx := r.Context()
	resp := map[string]string{}
	if body.Public {
		if !validAliasName(body.Name) {
			return mautrix.MInvalidParam.WithMessage("a public room's name becomes its alias #name: it may not contain ':', '#' or whitespace")
		}
		var roomID string
		var err error
		if g.d.CreatePublicRoom != nil {
			roomID, err = g.d.CreatePublicRoom(ctx, c, body.Name, body.Topic)
		} else {
			req := rooms.CreateRoomRequest{Creator: c.UserID, Preset: rooms.PresetPublicChat, Public: true, AliasLocalpart: body.Name, Name: &body.Name}
			if body.Topic != "" {
				req.Topic = &body.Topic
			}
			roomID, err = g.d.Rooms.CreateRoom(ctx, req)
		}
		if err != nil {
			return err
		}
		for _, u := range body.Invite {
			if _, err := g.d.Rooms.ChangeMembership(ctx, roomID, rooms.MembershipRequest{Sender: c.UserID, Target: u, Membership: spec.Invite}); err != nil {
				g.log.WarnContext(ctx, "gateway: inviting to a new room failed", "room_id", roomID, "user_id", u, "err", err)
			}
		}
		resp["room_id"], resp["alias"] = roomID, "#"+body.Name+":"+g.d.ServerName
	} else {
		req := rooms.CreateRoomRequest{Creator: c.UserID, Preset: rooms.PresetPrivateChat, Name: &body.Name, Invite: body.Invite}
		if body.Topic != "" {
			req.Topic = &body.Topic
		}
		if u, err := g.d.DB.UserByID(ctx, c.UserID); err == nil {
			req.CreatorDisplayName, req.CreatorAvatarURL = u.DisplayName, u.AvatarURL
		}
		roomID, err := g.d.Rooms.CreateRoom(ctx, req)
		if err != nil {
			return err
		}
		resp["room_id"] = roomID
	}
	g.log.InfoContext(ctx, "gateway: room created", "room_id", resp["room_id"], "user_id", c.UserID, "public", body.Public)
	return writeJSON(w, http.StatusOK, resp)
}

// roomAdminLevel is the power level that makes a user a room admin.
const roomAdminLevel = 100

// requireAdmin lets server admins and the room's admins (power level 100,
// or a v12 creator) through.
func (g *Gateway) requireAdmin(ctx context.Context, c *Caller, roomID string) error {
	if c.IsAdmin && !c.AppserviceToken {
		return nil
	}
	if m, err := g.d.Rooms.Membership(ctx, roomID, c.UserID); err != nil {
		return err
	} else if m == spec.Join {
		lvl, err := g.d.Rooms.UserPowerLevel(ctx, roomID, c.UserID)
		if err != nil {
			return err
		}
		if lvl >= roomAdminLevel {
			return nil
		}
	}
	return mautrix.MForbidden.WithMessage("Only the room's admins and server admins may change or delete a room")
}

// updateRoom is PATCH /api/rooms/{room} {"name"?, "topic"?}: room admins
// and server admins; the state events are sent as the caller, so the room's
// power levels apply too.
func (g *Gateway) updateRoom(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var body struct {
		Name  *string         `json:"name"`
		Topic *string         `json:"topic"`
		Other json.RawMessage `json:"public"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if body.Other != nil {
		return mautrix.MInvalidParam.WithMessage("public cannot be changed: create a new room")
	}
	if body.Name == nil && body.Topic == nil {
		return errMissingParam.WithMessage("nothing to change: give name and/or topic")
	}
	ctx := r.Context()
	roomID, err := g.resolveRoom(ctx, r.PathValue("room"))
	if err != nil {
		return err
	}
	if err := g.requireAdmin(ctx, c, roomID); err != nil {
		return err
	}
	if body.Name != nil {
		if _, err := g.d.Rooms.Send(ctx, roomID, rooms.EventRequest{Sender: c.UserID, Type: spec.MRoomName, StateKey: rooms.StrPtr(""),
			Content: mustJSON(map[string]string{"name": *body.Name})}); err != nil {
			return err
		}
	}
	if body.Topic != nil {
		if _, err := g.d.Rooms.Send(ctx, roomID, rooms.EventRequest{Sender: c.UserID, Type: spec.MRoomTopic, StateKey: rooms.StrPtr(""),
			Content: mustJSON(map[string]string{"topic": *body.Topic})}); err != nil {
			return err
		}
	}
	info, err := g.roomInfo(ctx, roomID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, info)
}

// deleteRoom is DELETE /api/rooms/{room} (server admins): every local
// member leaves, the aliases and the directory entry go, the room and its
// history are purged, and the deletion enters the event stream (hooks
// onRoomDeleted). WebSocket subscribers get an error frame.
func (g *Gateway) deleteRoom(w http.ResponseWriter, r *http.Request, c *Caller) error {
	if !c.IsAdmin || c.AppserviceToken {
		return mautrix.MForbidden.WithMessage("Only server admins may delete rooms")
	}
	ctx := context.WithoutCancel(r.Context()) // half a deletion helps nobody
	roomID, err := g.resolveRoom(ctx, r.PathValue("room"))
	if err != nil {
		return err
	}
	kicked, failed, err := g.d.Rooms.RemoveLocalMembers(ctx, roomID)
	if err != nil {
		return err
	}
	aliases, err := g.d.DB.DeleteRoomAliases(ctx, roomID)
	if err != nil {
		return err
	}
	if err := g.d.DB.SetRoomPublished(ctx, roomID, false); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	purged, err := g.d.Rooms.PurgeRoom(ctx, roomID, true)
	if err != nil {
		return err
	}
	n := g.d.Rooms.Notifier()
	if _, err := g.d.DB.RecordRoomDeleted(ctx, roomID, c.UserID, func(pos storage.StreamPos) {
		n.Advance(pos, rooms.Wake{Rooms: []string{roomID}})
	}); err != nil {
		return err
	}
	g.hub.roomDeleted(roomID)
	g.log.InfoContext(ctx, "gateway: room deleted", "room_id", roomID, "user_id", c.UserID, "events", purged)
	if aliases == nil {
		aliases = []string{}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"room_id": roomID, "kicked_users": kicked,
		"failed_to_kick_users": failed, "local_aliases": aliases, "purged_events": purged})
}

// joinREST is POST /api/rooms/{room}/join.
func (g *Gateway) joinREST(w http.ResponseWriter, r *http.Request, c *Caller) error {
	roomID, err := g.resolveRoom(r.Context(), r.PathValue("room"))
	if err != nil {
		return err
	}
	if err := g.joinRoom(r.Context(), c, roomID); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
}

// leaveREST is POST /api/rooms/{room}/leave.
func (g *Gateway) leaveREST(w http.ResponseWriter, r *http.Request, c *Caller) error {
	roomID, err := g.resolveRoom(r.Context(), r.PathValue("room"))
	if err != nil {
		return err
	}
	if _, err := g.d.Rooms.ChangeMembership(r.Context(), roomID, rooms.MembershipRequest{Sender: c.UserID, Target: c.UserID, Membership: spec.Leave}); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
}

// revokeTokens is POST /api/tokens/revoke: without a body it revokes the
// presented token; {"user_id"} revokes every token of that user (one's own,
// or anyone's for server admins). Revocation takes effect on the next request and ends WebSocket
// subscriptions made with those tokens.
func (g *Gateway) revokeTokens(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var body struct {
		UserID string `json:"user_id"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	ctx := r.Context()
	if body.UserID != "" {
		if body.UserID != c.UserID && (!c.IsAdmin || c.AppserviceToken) {
			return mautrix.MForbidden.WithMessage("Only server admins may revoke another user's tokens")
		}
		if _, err := g.d.DB.UserByID(ctx, body.UserID); errors.Is(err, storage.ErrNotFound) {
			return mautrix.MNotFound.WithMessage("Unknown user %s", truncate(body.UserID, 80))
		} else if err != nil {
			return err
		}
		if err := g.d.DB.RevokeUserTokens(ctx, body.UserID); err != nil {
			return err
		}
		g.log.InfoContext(ctx, "gateway: tokens revoked", "user_id", body.UserID, "by", c.UserID)
		return writeJSON(w, http.StatusOK, map[string]any{"revoked": "all", "user_id": body.UserID})
	}
	if c.AppserviceToken {
		return mautrix.MForbidden.WithMessage("An appservice's as_token is revoked by changing its registration file")
	}
	if _, err := g.d.DB.RevokeAccessToken(ctx, c.TokenHash); err != nil {
		return err
	}
	g.log.InfoContext(ctx, "gateway: token revoked", "user_id", c.UserID, "device_id", c.DeviceID)
	return writeJSON(w, http.StatusOK, map[string]any{"revoked": "token", "user_id": c.UserID})
}
