package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// registerRoomDirectory registers aliases, the public room directory and
// the user directory.
func (a *API) registerRoomDirectory(rt routes) {
	rt.client("/rooms/{roomId}/aliases", a.authed(a.roomAliases), http.MethodGet)
	rt.client("/directory/room/{roomAlias}", a.optionalAuth(a.getAlias), http.MethodGet)
	rt.client("/directory/room/{roomAlias}", a.authed(a.putAlias), http.MethodPut)
	rt.client("/directory/room/{roomAlias}", a.authed(a.deleteAlias), http.MethodDelete)
	rt.client("/publicRooms", a.public(a.publicRooms), http.MethodGet)
	rt.client("/publicRooms", a.authed(a.publicRooms), http.MethodPost)
	rt.client("/directory/list/room/{roomId}", a.public(a.getRoomVisibility), http.MethodGet)
	rt.client("/directory/list/room/{roomId}", a.authed(a.putRoomVisibility), http.MethodPut)
	rt.client("/user_directory/search", a.authed(a.rateLimited(a.searchUserDirectory)), http.MethodPost)
}

// splitAlias splits "#localpart:server" and checks its syntax.
func splitAlias(alias string) (localpart, server string, ok bool) {
	if len(alias) > 255 || !strings.HasPrefix(alias, "#") {
		return "", "", false
	}
	localpart, server, ok = strings.Cut(alias[1:], ":")
	if !ok || server == "" || !validAliasLocalpart(localpart) || strings.ContainsAny(server, " \x00/") {
		return "", "", false
	}
	return localpart, server, true
}

// aliasVar returns the {roomAlias} path variable, checked.
func aliasVar(r *http.Request) (alias, server string, err error) {
	alias, err = roomVar(r, "roomAlias")
	if err != nil {
		return "", "", err
	}
	_, server, ok := splitAlias(alias)
	if !ok {
		return "", "", badParam("Room alias invalid")
	}
	return alias, server, nil
}

// roomAliases is GET /rooms/{roomId}/aliases (members, or anyone for a
// world_readable room).
func (a *API) roomAliases(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	if !s.IsAdmin {
		if _, err := a.readAccess(r.Context(), roomID, s.UserID, false); err != nil {
			return err
		}
	}
	aliases, err := a.db.AliasesOfRoom(r.Context(), roomID)
	if err != nil {
		return err
	}
	if aliases == nil {
		aliases = []string{}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"aliases": aliases})
}

// getAlias is GET /directory/room/{roomAlias}. Only local aliases resolve.
func (a *API) getAlias(w http.ResponseWriter, r *http.Request) error {
	alias, _, err := aliasVar(r)
	if err != nil {
		return err
	}
	al, err := a.lookupAlias(r.Context(), alias)
	if errors.Is(err, storage.ErrNotFound) {
		return mautrix.MNotFound.WithMessage("Room alias %s not found", alias)
	} else if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"room_id": al.RoomID, "servers": []string{a.cfg.ServerName}})
}

// putAlias is PUT /directory/room/{roomAlias} {room_id}: the alias must be
// on this server and the user joined to the room (or a server admin).
func (a *API) putAlias(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	alias, server, err := aliasVar(r)
	if err != nil {
		return err
	}
	var body struct {
		RoomID *string `json:"room_id"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if body.RoomID == nil {
		return missingParam("Missing room_id")
	}
	if !validRoomID(*body.RoomID) {
		return badParam("Invalid room ID %q", *body.RoomID)
	}
	if server != a.cfg.ServerName {
		return badParam("Room alias must be on this server (%s)", a.cfg.ServerName)
	}
	if err := a.checkAliasNamespace(s, alias); err != nil {
		return err
	}
	if _, err := a.db.RoomByID(r.Context(), *body.RoomID); errors.Is(err, storage.ErrNotFound) {
		return mautrix.MNotFound.WithMessage("Room not found")
	} else if err != nil {
		return err
	}
	if !s.IsAdmin {
		m, err := a.rooms.Membership(r.Context(), *body.RoomID, s.UserID)
		if err != nil {
			return err
		}
		if m != spec.Join {
			return mautrix.MForbidden.WithMessage("You must be in the room to create an alias for it")
		}
	}
	if err := a.db.InsertAlias(r.Context(), alias, *body.RoomID, s.UserID); err != nil {
		if errors.Is(err, storage.ErrAlreadyExists) {
			return mautrix.MUnknown.WithStatus(http.StatusConflict).WithMessage("Room alias %s already exists", alias)
		}
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// isRoomAdmin reports whether userID is joined to roomID with a power level
// of at least state_default.
func (a *API) isRoomAdmin(ctx context.Context, roomID, userID string) (bool, error) {
	m, err := a.rooms.Membership(ctx, roomID, userID)
	if err != nil || m != spec.Join {
		return false, err
	}
	pl, err := a.rooms.PowerLevels(ctx, roomID)
	if err != nil {
		return false, err
	}
	level, err := a.rooms.UserPowerLevel(ctx, roomID, userID)
	if err != nil {
		return false, err
	}
	return level >= pl.StateDefault, nil
}

// deleteAlias is DELETE /directory/room/{roomAlias}: allowed to the alias's
// creator, room admins and server admins. The alias also leaves the room's
// m.room.canonical_alias when the user may change it (best effort, as the
// spec recommends).
func (a *API) deleteAlias(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	alias, _, err := aliasVar(r)
	if err != nil {
		return err
	}
	al, err := a.db.AliasByName(r.Context(), alias)
	if errors.Is(err, storage.ErrNotFound) {
		return mautrix.MNotFound.WithMessage("Room alias %s not found", alias)
	} else if err != nil {
		return err
	}
	if al.Creator != s.UserID && !s.IsAdmin {
		admin, err := a.isRoomAdmin(r.Context(), al.RoomID, s.UserID)
		if err != nil && !errors.Is(err, mautrix.MNotFound) {
			return err
		}
		if !admin {
			return mautrix.MForbidden.WithMessage("You don't have permission to delete the alias")
		}
	}
	if err := a.db.DeleteAlias(r.Context(), alias); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return mautrix.MNotFound.WithMessage("Room alias %s not found", alias)
		}
		return err
	}
	a.dropCanonicalAlias(r.Context(), al.RoomID, alias, s.UserID)
	return writeJSON(w, http.StatusOK, empty)
}

// dropCanonicalAlias removes a deleted alias from the room's
// m.room.canonical_alias, sent as userID; failures (e.g. no permission) are
// only logged, the alias is gone either way.
func (a *API) dropCanonicalAlias(ctx context.Context, roomID, alias, userID string) {
	cur, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomCanonicalAlias, "")
	if err != nil || cur == nil {
		return
	}
	content := map[string]any{}
	if json.Unmarshal(cur.Content(), &content) != nil {
		return
	}
	changed := false
	if v, _ := content["alias"].(string); v == alias {
		delete(content, "alias")
		changed = true
	}
	if alts, ok := content["alt_aliases"].([]any); ok {
		kept := make([]any, 0, len(alts))
		for _, v := range alts {
			if v == alias {
				changed = true
				continue
			}
			kept = append(kept, v)
		}
		content["alt_aliases"] = kept
	}
	if !changed {
		return
	}
	b, _ := json.Marshal(content)
	if _, err := a.rooms.Send(ctx, roomID, rooms.EventRequest{
		Sender: userID, Type: spec.MRoomCanonicalAlias, StateKey: rooms.StrPtr(""), Content: b,
	}); err != nil {
		a.log.DebugContext(ctx, "could not update canonical alias after alias deletion", "room_id", roomID, "err", err)
	}
}

// publicRoom is one room (PublicRoomsChunk) of the public room directory.
// Spec: https://spec.matrix.org/v1.12/client-server-api/#get_matrixclientv3publicrooms
type publicRoom struct {
	RoomID           string  `json:"room_id"`
	Name             string  `json:"name,omitempty"`
	Topic            string  `json:"topic,omitempty"`
	CanonicalAlias   string  `json:"canonical_alias,omitempty"`
	NumJoinedMembers int     `json:"num_joined_members"`
	WorldReadable    bool    `json:"world_readable"`
	GuestCanJoin     bool    `json:"guest_can_join"`
	JoinRule         string  `json:"join_rule,omitempty"`
	AvatarURL        string  `json:"avatar_url,omitempty"`
	RoomType         *string `json:"room_type,omitempty"`
}

// publicRoomEntry summarises a room from its current state.
func (a *API) publicRoomEntry(ctx context.Context, roomID string) (*publicRoom, error) {
	state, err := a.rooms.CurrentStateSnapshot(ctx, roomID)
	if err != nil {
		return nil, err
	}
	get := func(t, path string) string {
		ev := state[gomatrixserverlib.StateKeyTuple{EventType: t, StateKey: ""}]
		if ev == nil {
			return ""
		}
		return gjson.GetBytes(ev.Content(), path).Str
	}
	n, err := a.db.JoinedMemberCount(ctx, roomID)
	if err != nil {
		return nil, err
	}
	pr := &publicRoom{
		RoomID:           roomID,
		Name:             get(spec.MRoomName, "name"),
		Topic:            get(spec.MRoomTopic, "topic"),
		CanonicalAlias:   get(spec.MRoomCanonicalAlias, "alias"),
		NumJoinedMembers: n,
		WorldReadable:    get(spec.MRoomHistoryVisibility, "history_visibility") == rooms.VisibilityWorldReadable,
		GuestCanJoin:     get("m.room.guest_access", "guest_access") == "can_join",
		JoinRule:         get(spec.MRoomJoinRules, "join_rule"),
		AvatarURL:        get("m.room.avatar", "url"),
	}
	if create := state[gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate, StateKey: ""}]; create != nil {
		if t := gjson.GetBytes(create.Content(), "type"); t.Type == gjson.String {
			pr.RoomType = &t.Str
		}
	}
	return pr, nil
}

// listable reports whether a published room belongs in the directory: it
// must be joinable or knockable, or readable by anyone (as in Synapse).
func (pr *publicRoom) listable() bool {
	switch pr.JoinRule {
	case spec.Public, spec.Knock, "knock_restricted":
		return true
	}
	return pr.WorldReadable
}

// matches applies the directory filter: the term is looked for in the
// name, topic and canonical alias (as Synapse does), or is the room id
// itself — not a part of it, which would match random ids.
func (pr *publicRoom) matches(term string, roomTypes []*string, hasTypes bool) bool {
	if term != "" {
		t := strings.ToLower(term)
		if !strings.Contains(strings.ToLower(pr.Name), t) && !strings.Contains(strings.ToLower(pr.Topic), t) &&
			!strings.Contains(strings.ToLower(pr.CanonicalAlias), t) && term != pr.RoomID {
			return false
		}
	}
	if hasTypes {
		for _, rt := range roomTypes {
			if (rt == nil && pr.RoomType == nil) || (rt != nil && pr.RoomType != nil && *rt == *pr.RoomType) {
				return true
			}
		}
		return false
	}
	return true
}

// parseDirectoryToken reads the since token of /publicRooms: "p<offset>".
func parseDirectoryToken(tok string) (int, error) {
	if tok == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(strings.TrimPrefix(tok, "p"))
	if err != nil || n < 0 || !strings.HasPrefix(tok, "p") {
		return 0, badParam("Invalid since token")
	}
	return n, nil
}

// publicRooms is GET (unauthenticated) and POST (authenticated, with a
// filter) /publicRooms. Rooms are ordered by joined members, then room id.
func (a *API) publicRooms(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Limit  *int   `json:"limit"`
		Since  string `json:"since"`
		Server string `json:"server"`
		Filter struct {
			GenericSearchTerm string    `json:"generic_search_term"`
			RoomTypes         []*string `json:"room_types"`
		} `json:"filter"`
	}
	q := r.URL.Query()
	if r.Method == http.MethodPost {
		if err := decodeJSON(r, &body); err != nil {
			return err
		}
	} else {
		body.Since = q.Get("since")
		if v := q.Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return badParam("limit must be an integer")
			}
			body.Limit = &n
		}
	}
	if server := q.Get("server"); server != "" && server != a.cfg.ServerName {
		return badParam("Only this server's room directory (%s) is available", a.cfg.ServerName)
	}
	offset, err := parseDirectoryToken(body.Since)
	if err != nil {
		return err
	}
	limit := 0 // no limit
	if body.Limit != nil {
		if *body.Limit < 0 {
			return badParam("limit must not be negative")
		}
		limit = *body.Limit
	}
	ids, err := a.db.PublishedRoomIDs(r.Context())
	if err != nil {
		return err
	}
	var all []*publicRoom
	for _, id := range ids {
		pr, err := a.publicRoomEntry(r.Context(), id)
		if err != nil {
			if errors.Is(err, mautrix.MNotFound) {
				continue
			}
			return err
		}
		if pr.listable() {
			all = append(all, pr)
		}
	}
	total := len(all)
	hasTypes := body.Filter.RoomTypes != nil
	matched := make([]*publicRoom, 0, len(all))
	for _, pr := range all {
		if pr.matches(body.Filter.GenericSearchTerm, body.Filter.RoomTypes, hasTypes) {
			matched = append(matched, pr)
		}
	}
	sort.SliceStable(matched, func(i, j int) bool {
		if matched[i].NumJoinedMembers != matched[j].NumJoinedMembers {
			return matched[i].NumJoinedMembers > matched[j].NumJoinedMembers
		}
		return matched[i].RoomID < matched[j].RoomID
	})
	resp := map[string]any{"total_room_count_estimate": total}
	page := matched[min(offset, len(matched)):]
	if limit > 0 && len(page) > limit {
		page = page[:limit]
		resp["next_batch"] = "p" + strconv.Itoa(offset+limit)
	}
	if offset > 0 {
		prev := 0
		if limit > 0 {
			prev = max(offset-limit, 0)
		}
		resp["prev_batch"] = "p" + strconv.Itoa(prev)
	}
	resp["chunk"] = page
	return writeJSON(w, http.StatusOK, resp)
}

// getRoomVisibility is GET /directory/list/room/{roomId}.
func (a *API) getRoomVisibility(w http.ResponseWriter, r *http.Request) error {
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	room, err := a.db.RoomByID(r.Context(), roomID)
	if errors.Is(err, storage.ErrNotFound) {
		return mautrix.MNotFound.WithMessage("Room not found")
	} else if err != nil {
		return err
	}
	vis := "private"
	if room.Published {
		vis = "public"
	}
	return writeJSON(w, http.StatusOK, map[string]string{"visibility": vis})
}

// putRoomVisibility is PUT /directory/list/room/{roomId} {visibility}:
// room admins (power level >= state_default) and server admins only.
func (a *API) putRoomVisibility(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	var body struct {
		Visibility string `json:"visibility"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if body.Visibility != "public" && body.Visibility != "private" {
		return badParam("visibility must be \"public\" or \"private\"")
	}
	if _, err := a.db.RoomByID(r.Context(), roomID); errors.Is(err, storage.ErrNotFound) {
		return mautrix.MNotFound.WithMessage("Room not found")
	} else if err != nil {
		return err
	}
	if !s.IsAdmin {
		admin, err := a.isRoomAdmin(r.Context(), roomID, s.UserID)
		if err != nil {
			return err
		}
		if !admin {
			return mautrix.MForbidden.WithMessage("You don't have permission to change the room's directory visibility")
		}
	}
	if err := a.db.SetRoomPublished(r.Context(), roomID, body.Visibility == "public"); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// Limits of the user directory search.
const (
	defaultUserDirectoryLimit = 10
	maxUserDirectoryLimit     = 100
)

type userDirectoryResult struct {
	UserID      string  `json:"user_id"`
	DisplayName *string `json:"display_name,omitempty"`
	AvatarURL   *string `json:"avatar_url,omitempty"`
}

// searchUserDirectory is POST /user_directory/search: users who share a
// room with the searcher or are in a public room (Synapse's default),
// matched on user id and display name.
func (a *API) searchUserDirectory(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	var body struct {
		SearchTerm *string `json:"search_term"`
		Limit      *int    `json:"limit"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if body.SearchTerm == nil {
		return missingParam("Missing search_term")
	}
	limit := defaultUserDirectoryLimit
	if body.Limit != nil {
		if *body.Limit < 0 {
			return badParam("limit must not be negative")
		}
		limit = min(*body.Limit, maxUserDirectoryLimit)
	}
	public, err := a.db.RoomsWithJoinRule(r.Context(), spec.Public)
	if err != nil {
		return err
	}
	users, err := a.db.SearchUserDirectory(r.Context(), s.UserID, strings.TrimSpace(*body.SearchTerm), public, limit+1)
	if err != nil {
		return err
	}
	limited := len(users) > limit
	if limited {
		users = users[:limit]
	}
	results := make([]userDirectoryResult, len(users))
	for i, u := range users {
		results[i] = userDirectoryResult{UserID: u.UserID, DisplayName: u.DisplayName, AvatarURL: u.AvatarURL}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"results": results, "limited": limited})
}
