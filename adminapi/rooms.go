package adminapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// Room endpoints: https://element-hq.github.io/synapse/latest/admin_api/rooms.html

// roomListEntry is one room of GET /_synapse/admin/v1/rooms.
type roomListEntry struct {
	RoomID             string  `json:"room_id"`
	Name               *string `json:"name"`
	CanonicalAlias     *string `json:"canonical_alias"`
	JoinedMembers      int64   `json:"joined_members"`
	JoinedLocalMembers int64   `json:"joined_local_members"`
	Version            string  `json:"version"`
	Creator            string  `json:"creator"`
	Encryption         *string `json:"encryption"`
	Federatable        bool    `json:"federatable"`
	Public             bool    `json:"public"`
	JoinRules          *string `json:"join_rules"`
	GuestAccess        *string `json:"guest_access"`
	HistoryVisibility  *string `json:"history_visibility"`
	StateEvents        int64   `json:"state_events"`
	RoomType           *string `json:"room_type"`
}

func toRoomListEntry(r *storage.AdminRoom) roomListEntry {
	return roomListEntry{
		RoomID: r.RoomID, Name: r.Name, CanonicalAlias: r.CanonicalAlias, JoinedMembers: r.JoinedMembers,
		JoinedLocalMembers: r.JoinedMembers, Version: r.Version, Creator: r.Creator, Encryption: r.Encryption,
		Federatable: r.Federatable(), Public: r.Public, JoinRules: r.JoinRules, GuestAccess: r.GuestAccess,
		HistoryVisibility: r.HistoryVisibility, StateEvents: r.StateEvents, RoomType: r.RoomType,
	}
}

var roomOrderValues = []string{"alphabetical", "size", "name", "canonical_alias", "joined_members", "joined_local_members",
	"version", "creator", "encryption", "federatable", "public", "join_rules", "guest_access", "history_visibility", "state_events"}

// listRooms is GET /_synapse/admin/v1/rooms.
func (a *API) listRooms(w http.ResponseWriter, r *http.Request) error {
	var q storage.RoomListQuery
	var err error
	if q.From, err = queryInt(r, "from", 0); err != nil {
		return err
	}
	if q.Limit, err = queryInt(r, "limit", 100); err != nil {
		return err
	}
	params := r.URL.Query()
	if _, ok := params["order_by"]; ok {
		q.OrderBy = params.Get("order_by")
		if _, known := storage.RoomOrderColumns[q.OrderBy]; !known {
			return invalidParam("Query parameter \"order_by\" must be one of %v", roomOrderValues)
		}
	}
	if terms, ok := params["search_term"]; ok {
		if terms[0] == "" {
			return invalidParam("search_term cannot be an empty string")
		}
		q.SearchTerm = terms[0]
	}
	if q.PublicRooms, err = queryBool(r, "public_rooms"); err != nil {
		return err
	}
	if q.EmptyRooms, err = queryBool(r, "empty_rooms"); err != nil {
		return err
	}
	if q.Backwards, err = queryDir(r); err != nil {
		return err
	}
	list, total, err := a.db.ListRooms(r.Context(), q)
	if err != nil {
		return err
	}
	out := make([]roomListEntry, 0, len(list))
	for _, room := range list {
		out = append(out, toRoomListEntry(room))
	}
	resp := map[string]any{"rooms": out, "offset": q.From, "total_rooms": total}
	if q.From+q.Limit < total {
		resp["next_batch"] = q.From + q.Limit
	}
	if q.From > 0 {
		resp["prev_batch"] = max(q.From-q.Limit, 0)
	}
	return writeJSON(w, http.StatusOK, resp)
}

// existingRoom returns the {roomId} path variable of a room that exists.
func (a *API) existingRoom(r *http.Request) (string, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return "", err
	}
	if _, err := a.db.RoomByID(r.Context(), roomID); errors.Is(err, storage.ErrNotFound) {
		return "", errRoomNotFound
	} else if err != nil {
		return "", err
	}
	return roomID, nil
}

// getRoom is GET /_synapse/admin/v1/rooms/{roomId}.
func (a *API) getRoom(w http.ResponseWriter, r *http.Request) error {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return err
	}
	ctx := r.Context()
	room, err := a.db.AdminRoomByID(ctx, roomID)
	if errors.Is(err, storage.ErrNotFound) {
		return errRoomNotFound
	} else if err != nil {
		return err
	}
	devices, err := a.db.JoinedLocalDevices(ctx, roomID)
	if err != nil {
		return err
	}
	forgotten, err := a.db.RoomForgotten(ctx, roomID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, struct {
		roomListEntry
		Topic              *string `json:"topic"`
		Avatar             *string `json:"avatar"`
		JoinedLocalDevices int64   `json:"joined_local_devices"`
		Forgotten          bool    `json:"forgotten"`
	}{toRoomListEntry(room), room.Topic, room.Avatar, devices, forgotten})
}

// roomMembers is GET /_synapse/admin/v1/rooms/{roomId}/members: the joined users.
func (a *API) roomMembers(w http.ResponseWriter, r *http.Request) error {
	roomID, err := a.existingRoom(r)
	if err != nil {
		return err
	}
	ms, err := a.db.MembersOfRoom(r.Context(), roomID, spec.Join)
	if err != nil {
		return err
	}
	members := make([]string, 0, len(ms))
	for _, m := range ms {
		members = append(members, m.UserID)
	}
	return writeJSON(w, http.StatusOK, map[string]any{"members": members, "total": len(members)})
}

// roomState is GET /_synapse/admin/v1/rooms/{roomId}/state[?type=].
func (a *API) roomState(w http.ResponseWriter, r *http.Request) error {
	roomID, err := a.existingRoom(r)
	if err != nil {
		return err
	}
	evs, err := a.db.RoomStateEvents(r.Context(), roomID, r.URL.Query().Get("type"))
	if err != nil {
		return err
	}
	viewer := rooms.Viewer{UserID: callerFrom(r.Context()).UserID}
	return writeJSON(w, http.StatusOK, map[string]any{"state": rooms.ToClientEvents(evs, viewer, rooms.FormatOptions{})})
}

const (
	defaultMessagesLimit = 10
	maxMessagesLimit     = 1000
	maxFilterListLen     = 500
)

// roomMessages is GET /_synapse/admin/v1/rooms/{roomId}/messages: the
// client API's /messages with an administrator's view (every event,
// whatever the history visibility). Without from, dir=f starts at the
// beginning of the room and dir=b at its end.
func (a *API) roomMessages(w http.ResponseWriter, r *http.Request) error {
	roomID, err := a.existingRoom(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	params := r.URL.Query()
	backwards, err := queryDir(r)
	if err != nil {
		return err
	}
	parseToken := func(name string) (storage.StreamPos, bool, error) {
		v := params.Get(name)
		if v == "" {
			return 0, false, nil
		}
		p, err := rooms.ParseStreamToken(v)
		if err != nil {
			return 0, false, invalidParam("Invalid %s token %q", name, v)
		}
		return p, true, nil
	}
	from, hasFrom, err := parseToken("from")
	if err != nil {
		return err
	}
	to, _, err := parseToken("to")
	if err != nil {
		return err
	}
	fp := &mautrix.FilterPart{}
	if raw := strings.TrimSpace(params.Get("filter")); raw != "" {
		if !gjson.Valid(raw) || !gjson.Parse(raw).IsObject() {
			return invalidParam("filter must be a JSON object")
		}
		if err := json.Unmarshal([]byte(raw), fp); err != nil {
			return invalidParam("Invalid filter: %v", err)
		}
	}
	if fp.Limit < 0 {
		return invalidParam("filter limit must not be negative")
	}
	def := defaultMessagesLimit
	if fp.Limit > 0 {
		def = fp.Limit
	}
	limit, err := queryInt(r, "limit", def)
	if err != nil {
		return err
	}
	limit = min(limit, maxMessagesLimit)
	if !hasFrom && backwards {
		from = a.rooms.Notifier().Latest()
	}
	start := rooms.StreamToken(from)
	if hasFrom {
		start = params.Get("from")
	}
	f := &storage.EventFilter{ContainsURL: fp.ContainsURL}
	for _, n := range []int{len(fp.Types), len(fp.NotTypes), len(fp.Senders), len(fp.NotSenders)} {
		if n > maxFilterListLen {
			return invalidParam("filter lists may hold at most %d entries", maxFilterListLen)
		}
	}
	for _, t := range fp.Types {
		f.Types = append(f.Types, t.Type)
	}
	for _, t := range fp.NotTypes {
		f.NotTypes = append(f.NotTypes, t.Type)
	}
	for _, u := range fp.Senders {
		f.Senders = append(f.Senders, string(u))
	}
	for _, u := range fp.NotSenders {
		f.NotSenders = append(f.NotSenders, string(u))
	}
	var evs []*storage.Event
	if limit > 0 && (!backwards || from > 0) {
		// One extra event tells whether more remain.
		if evs, err = a.db.RoomEvents(ctx, roomID, from, to, backwards, limit+1, f); err != nil {
			return err
		}
	}
	more := len(evs) > limit
	if more {
		evs = evs[:limit]
	}
	viewer := rooms.Viewer{UserID: callerFrom(ctx).UserID}
	resp := map[string]any{"start": start, "chunk": rooms.ToClientEvents(evs, viewer, rooms.FormatOptions{})}
	if more {
		last := evs[len(evs)-1].Pos
		if backwards {
			last--
		}
		resp["end"] = rooms.StreamToken(last)
	}
	if fp.LazyLoadMembers && len(evs) > 0 {
		seen := map[string]bool{}
		var state []*storage.Event
		for _, e := range evs {
			if seen[e.Sender] {
				continue
			}
			seen[e.Sender] = true
			m, err := a.db.CurrentStateEvent(ctx, roomID, spec.MRoomMember, e.Sender)
			if errors.Is(err, storage.ErrNotFound) {
				continue
			} else if err != nil {
				return err
			}
			state = append(state, m)
		}
		resp["state"] = rooms.ToClientEvents(state, viewer, rooms.FormatOptions{})
	}
	return writeJSON(w, http.StatusOK, resp)
}

// getBlock is GET /_synapse/admin/v1/rooms/{roomId}/block.
func (a *API) getBlock(w http.ResponseWriter, r *http.Request) error {
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	by, err := a.db.RoomBlockedBy(r.Context(), roomID)
	if errors.Is(err, storage.ErrNotFound) {
		return writeJSON(w, http.StatusOK, map[string]bool{"block": false})
	} else if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"block": true, "user_id": by})
}

// putBlock is PUT /_synapse/admin/v1/rooms/{roomId}/block. Any room id may
// be blocked, known here or not.
func (a *API) putBlock(w http.ResponseWriter, r *http.Request) error {
	b, err := readBody(r, false)
	if err != nil {
		return err
	}
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	if !b.has("block") {
		return missingParam("Missing params: ['block']")
	}
	var block bool
	if err := json.Unmarshal(b["block"], &block); err != nil {
		return badJSON("Param 'block' must be a boolean.")
	}
	ctx := r.Context()
	caller := callerFrom(ctx)
	if block {
		err = a.db.BlockRoom(ctx, roomID, caller.UserID)
	} else {
		err = a.db.UnblockRoom(ctx, roomID)
	}
	if err != nil {
		return err
	}
	a.log.InfoContext(ctx, "room block changed", "room_id", roomID, "block", block, "by", caller.UserID)
	return writeJSON(w, http.StatusOK, map[string]bool{"block": block})
}

// makeRoomAdmin is POST /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin.
func (a *API) makeRoomAdmin(w http.ResponseWriter, r *http.Request) error {
	b, err := readBody(r, true)
	if err != nil {
		return err
	}
	roomID, err := a.resolveRoom(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	target := callerFrom(ctx).UserID
	if u, err := b.string("user_id"); err != nil {
		return err
	} else if u != nil {
		if !validUserID(*u) {
			return invalidParam("Invalid user id %q", *u)
		}
		target = *u
	}
	if err := a.rooms.MakeRoomAdmin(ctx, roomID, target); err != nil {
		return err
	}
	a.log.InfoContext(ctx, "made room admin", "room_id", roomID, "user_id", target, "by", callerFrom(ctx).UserID)
	return writeJSON(w, http.StatusOK, empty)
}

// joinUser is POST /_synapse/admin/v1/join/{roomIdOrAlias}: put a local user
// (an agent, say) into a room. In a room that is not public they are first
// invited, by the calling admin when the admin is in the room and may
// invite, else by the most powerful local member who may.
func (a *API) joinUser(w http.ResponseWriter, r *http.Request) error {
	b, err := readBody(r, false)
	if err != nil {
		return err
	}
	if !b.has("user_id") {
		return missingParam("Missing params: ['user_id']")
	}
	userID, err := b.string("user_id")
	if err != nil || userID == nil || !validUserID(*userID) {
		return invalidParam("Invalid user id")
	}
	if !a.isLocal(*userID) {
		return unknownErr("This endpoint can only be used with local users")
	}
	ctx := r.Context()
	u, err := a.db.UserByID(ctx, *userID)
	if errors.Is(err, storage.ErrNotFound) {
		return errUserNotFound
	} else if err != nil {
		return err
	}
	if u.Deactivated {
		return unknownErr("User %s is deactivated", *userID)
	}
	roomID, err := a.resolveRoom(r)
	if err != nil {
		return err
	}
	caller := callerFrom(ctx)
	if err := a.rooms.ForceJoin(ctx, roomID, *userID, caller.UserID, u.DisplayName, u.AvatarURL); err != nil {
		return err
	}
	a.log.InfoContext(ctx, "admin joined user to room", "room_id", roomID, "user_id", *userID, "by", caller.UserID)
	return writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
}
