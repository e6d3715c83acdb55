package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// registerEphemeral serves the per-user state that is not room history:
// typing, receipts, read markers, presence, account data, filters and push rules.
func (a *API) registerEphemeral(rt routes) {
	rt.client("/rooms/{roomId}/typing/{userId}", a.authed(a.putTyping), http.MethodPut)
	rt.client("/rooms/{roomId}/receipt/{receiptType}/{eventId}", a.authed(a.postReceipt), http.MethodPost)
	rt.client("/rooms/{roomId}/read_markers", a.authed(a.postReadMarkers), http.MethodPost)
	rt.client("/presence/{userId}/status", a.authed(a.getPresence), http.MethodGet)
	rt.client("/presence/{userId}/status", a.authed(a.putPresence), http.MethodPut)

	rt.client("/user/{userId}/account_data/{type}", a.authed(a.getAccountData), http.MethodGet)
	rt.client("/user/{userId}/account_data/{type}", a.authed(a.putAccountData), http.MethodPut)
	rt.client("/user/{userId}/rooms/{roomId}/account_data/{type}", a.authed(a.getAccountData), http.MethodGet)
	rt.client("/user/{userId}/rooms/{roomId}/account_data/{type}", a.authed(a.putAccountData), http.MethodPut)

	rt.client("/user/{userId}/filter", a.authed(a.postFilter), http.MethodPost)
	rt.client("/user/{userId}/filter/{filterId}", a.authed(a.getFilter), http.MethodGet)

	a.registerPushRules(rt)
}

// ephVar returns a path variable, percent-decoded (the router matches on
// the encoded path so that IDs may contain encoded slashes).
func ephVar(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(mux.Vars(r)[name])
	if err != nil {
		return "", badParam("Invalid %s in path", name)
	}
	return v, nil
}

// ephVars decodes several path variables at once.
func ephVars(r *http.Request, names ...string) ([]string, error) {
	out := make([]string, len(names))
	for i, n := range names {
		v, err := ephVar(r, n)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// ephRequireJoined refuses users who are not joined to the room. An unknown
// room gets the same answer, so the endpoint does not reveal which rooms
// exist. It reads the memberships table rather than the room engine so that
// made-up room IDs never load (or cache) anything.
func (a *API) ephRequireJoined(ctx context.Context, roomID, userID string) error {
	m, err := a.db.MembershipOf(ctx, roomID, userID)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && m.Membership != "join") {
		return mautrix.MForbidden.WithMessage("You are not in this room")
	} else if err != nil {
		return fmt.Errorf("membership of %s in %s: %w", userID, roomID, err)
	}
	return nil
}

// ephRoomEvent loads an event and checks it belongs to roomID (M_NOT_FOUND otherwise).
func (a *API) ephRoomEvent(ctx context.Context, roomID, eventID string) (*storage.Event, error) {
	ev, err := a.db.EventByID(ctx, eventID)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && ev.RoomID != roomID) {
		return nil, mautrix.MNotFound.WithMessage("Event %s not found in this room", eventID)
	} else if err != nil {
		return nil, fmt.Errorf("loading event %s: %w", eventID, err)
	}
	return ev, nil
}

// defaultTypingTimeout applies when a client sends no timeout (as Synapse).
const defaultTypingTimeout = 30 * time.Second

// putTyping answers PUT /rooms/{roomId}/typing/{userId}
// (https://spec.matrix.org/v1.12/client-server-api/#put_matrixclientv3roomsroomidtypinguserid).
func (a *API) putTyping(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	vars, err := ephVars(r, "roomId", "userId")
	if err != nil {
		return err
	}
	roomID, userID := vars[0], vars[1]
	if userID != s.UserID {
		return mautrix.MForbidden.WithMessage("Cannot set the typing state of another user")
	}
	var body struct {
		Typing  *bool  `json:"typing"`
		Timeout *int64 `json:"timeout"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if body.Typing == nil {
		return mautrix.MBadJSON.WithMessage("Missing required field 'typing'")
	}
	if err := a.ephRequireJoined(r.Context(), roomID, userID); err != nil {
		return err
	}
	timeout := defaultTypingTimeout
	if body.Timeout != nil && *body.Timeout > 0 {
		timeout = time.Duration(*body.Timeout) * time.Millisecond
	}
	if err := a.rooms.Typing().Set(r.Context(), roomID, userID, *body.Typing, timeout); err != nil {
		return fmt.Errorf("setting typing in %s: %w", roomID, err)
	}
	typingNow, _ := a.rooms.Typing().Since(roomID, 0)
	if typingNow == nil {
		typingNow = []string{}
	}
	a.pushEphemeral(r.Context(), roomID, "", map[string]any{
		"type": "m.typing", "room_id": roomID, "content": map[string]any{"user_ids": typingNow},
	})
	return writeJSON(w, http.StatusOK, empty)
}

// Receipt types a client may send (https://spec.matrix.org/v1.12/client-server-api/#receipts).
const (
	receiptRead        = "m.read"
	receiptReadPrivate = "m.read.private"
	receiptFullyRead   = "m.fully_read"
)

// postReceipt answers POST /rooms/{roomId}/receipt/{receiptType}/{eventId}.
func (a *API) postReceipt(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	vars, err := ephVars(r, "roomId", "receiptType", "eventId")
	if err != nil {
		return err
	}
	roomID, receiptType, eventID := vars[0], vars[1], vars[2]
	switch receiptType {
	case receiptRead, receiptReadPrivate, receiptFullyRead:
	default:
		return badParam("Unknown receipt type %q", receiptType)
	}
	raw, err := readJSONObject(r)
	if err != nil {
		return err
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(raw, &body); err != nil {
		return mautrix.MBadJSON.WithMessage("Invalid JSON: %v", err)
	}
	threadID := ""
	if t, ok := body["thread_id"]; ok && string(t) != "null" {
		if receiptType == receiptFullyRead {
			return badParam("thread_id cannot be used with %s", receiptFullyRead)
		}
		if err := json.Unmarshal(t, &threadID); err != nil {
			return badParam("thread_id must be a string")
		}
		if threadID != "main" && !strings.HasPrefix(threadID, "$") {
			return badParam("thread_id must be \"main\" or an event ID")
		}
	}
	if err := a.ephRequireJoined(r.Context(), roomID, s.UserID); err != nil {
		return err
	}
	ev, err := a.ephRoomEvent(r.Context(), roomID, eventID)
	if err != nil {
		return err
	}
	if receiptType == receiptFullyRead {
		err = a.setFullyRead(r.Context(), roomID, s.UserID, ev)
	} else {
		err = a.setReceipt(r.Context(), roomID, s.UserID, receiptType, threadID, eventID)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// setReceipt stores a read receipt (it only ever moves forward) and wakes
// /sync: the room for a public receipt, only its owner for a private one.
func (a *API) setReceipt(ctx context.Context, roomID, userID, receiptType, threadID, eventID string) error {
	rec := storage.Receipt{RoomID: roomID, UserID: userID, ReceiptType: receiptType, ThreadID: threadID,
		EventID: eventID, TS: time.Now().UnixMilli()}
	_, err := a.db.SetReceipt(ctx, rec, func(pos storage.StreamPos) {
		wake := rooms.Wake{Rooms: []string{roomID}, ReceiptRooms: []string{roomID}}
		if receiptType == receiptReadPrivate {
			wake = rooms.Wake{Users: []string{userID}, ReceiptRooms: []string{roomID}}
		}
		a.rooms.Notifier().Advance(pos, wake)
	})
	if errors.Is(err, storage.ErrNotFound) {
		return mautrix.MNotFound.WithMessage("Event %s not found in this room", eventID)
	} else if err != nil {
		return fmt.Errorf("storing %s receipt: %w", receiptType, err)
	}
	if receiptType != receiptReadPrivate {
		receipt := map[string]any{"ts": rec.TS}
		if threadID != "" {
			receipt["thread_id"] = threadID
		}
		a.pushEphemeral(ctx, roomID, "", map[string]any{
			"type": "m.receipt", "room_id": roomID,
			"content": map[string]any{eventID: map[string]any{receiptType: map[string]any{userID: receipt}}},
		})
	}
	return nil
}

// setFullyRead moves the user's m.fully_read room account data to ev,
// never backwards (as Synapse does).
func (a *API) setFullyRead(ctx context.Context, roomID, userID string, ev *storage.Event) error {
	cur, err := a.db.AccountData(ctx, userID, roomID, receiptFullyRead)
	if err == nil {
		var c struct {
			EventID string `json:"event_id"`
		}
		if json.Unmarshal(cur, &c) == nil && c.EventID != "" {
			if c.EventID == ev.EventID {
				return nil
			}
			if old, err := a.db.EventByID(ctx, c.EventID); err == nil && old.RoomID == roomID && old.Pos > ev.Pos {
				return nil
			}
		}
	} else if !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("reading fully-read marker: %w", err)
	}
	content, err := json.Marshal(map[string]string{"event_id": ev.EventID})
	if err != nil {
		return err
	}
	return a.setAccountData(ctx, userID, roomID, receiptFullyRead, content)
}

// postReadMarkers answers POST /rooms/{roomId}/read_markers
// (https://spec.matrix.org/v1.12/client-server-api/#post_matrixclientv3roomsroomidread_markers).
func (a *API) postReadMarkers(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	roomID, err := ephVar(r, "roomId")
	if err != nil {
		return err
	}
	var body struct {
		FullyRead   *string `json:"m.fully_read"`
		Read        *string `json:"m.read"`
		ReadPrivate *string `json:"m.read.private"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if err := a.ephRequireJoined(r.Context(), roomID, s.UserID); err != nil {
		return err
	}
	// Check every event first so a bad one changes nothing.
	type marker struct {
		kind string
		ev   *storage.Event
	}
	var markers []marker
	for _, m := range []struct {
		kind string
		id   *string
	}{{receiptFullyRead, body.FullyRead}, {receiptRead, body.Read}, {receiptReadPrivate, body.ReadPrivate}} {
		if m.id == nil {
			continue
		}
		ev, err := a.ephRoomEvent(r.Context(), roomID, *m.id)
		if err != nil {
			return err
		}
		markers = append(markers, marker{m.kind, ev})
	}
	for _, m := range markers {
		if m.kind == receiptFullyRead {
			err = a.setFullyRead(r.Context(), roomID, s.UserID, m.ev)
		} else {
			err = a.setReceipt(r.Context(), roomID, s.UserID, m.kind, "", m.ev.EventID)
		}
		if err != nil {
			return err
		}
	}
	return writeJSON(w, http.StatusOK, empty)
}

// Presence states (https://spec.matrix.org/v1.12/client-server-api/#presence).
const (
	presenceOnline      = "online"
	presenceUnavailable = "unavailable"
	presenceOffline     = "offline"
)

func validPresence(p string) bool {
	return p == presenceOnline || p == presenceUnavailable || p == presenceOffline
}

// presenceRefresh is how often an unchanged "online" is written again, so
// last_active_ago and currently_active stay meaningful for active users.
const presenceRefresh = 5 * time.Minute

// presenceCache remembers the last presence written per user, so /sync
// (which sets presence on every request) writes only real changes.
type presenceCache struct {
	mu      sync.Mutex
	last    map[string]presenceState
	writeMu sync.Mutex // serialises the slow path: no duplicate writes for one change
}

type presenceState struct {
	presence  string
	statusMsg *string
	written   time.Time
}

func newPresenceCache() *presenceCache {
	return &presenceCache{last: make(map[string]presenceState)}
}

func (c *presenceCache) get(userID string) (presenceState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.last[userID]
	return p, ok
}

func (c *presenceCache) put(userID string, p presenceState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last[userID] = p
}

func sameStrPtr(a, b *string) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

// setPresence records userID's presence when it differs from the current
// one; a nil statusMsg keeps the current status message. /sync calls it on
// every request with set_presence, so unchanged values cost no write.
func (a *API) setPresence(ctx context.Context, userID, presence string, statusMsg *string) error {
	return a.writePresence(ctx, userID, presence, statusMsg, statusMsg == nil)
}

// writePresence is setPresence with an explicit choice between keeping and
// replacing (possibly clearing) the status message.
func (a *API) writePresence(ctx context.Context, userID, presence string, statusMsg *string, keepMsg bool) error {
	if !validPresence(presence) {
		return badParam("Invalid presence %q: must be online, unavailable or offline", presence)
	}
	unchanged := func(cur presenceState) bool {
		msg := statusMsg
		if keepMsg {
			msg = cur.statusMsg
		}
		return cur.presence == presence && sameStrPtr(cur.statusMsg, msg) &&
			(presence != presenceOnline || time.Since(cur.written) < presenceRefresh)
	}
	if cur, ok := a.presence.get(userID); ok && unchanged(cur) {
		return nil
	}
	a.presence.writeMu.Lock()
	defer a.presence.writeMu.Unlock()
	cur, ok := a.presence.get(userID)
	if !ok {
		p, err := a.db.PresenceOf(ctx, userID)
		if err == nil {
			cur, ok = presenceState{p.Presence, p.StatusMsg, time.UnixMilli(p.LastActiveTS)}, true
			a.presence.put(userID, cur)
		} else if !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("reading presence of %s: %w", userID, err)
		}
	}
	if ok && unchanged(cur) {
		return nil
	}
	msg := statusMsg
	if keepMsg && ok {
		msg = cur.statusMsg
	}
	now := time.Now()
	err := a.db.SetPresence(ctx, userID, presence, msg, now.UnixMilli(), func(pos storage.StreamPos) {
		a.rooms.Notifier().Advance(pos, rooms.Wake{ShareRoomsWith: []string{userID}})
	})
	if err != nil {
		return fmt.Errorf("storing presence of %s: %w", userID, err)
	}
	a.presence.put(userID, presenceState{presence, msg, now})
	content := map[string]any{"presence": presence, "last_active_ago": 0, "currently_active": presence == presenceOnline}
	if msg != nil {
		content["status_msg"] = *msg
	}
	a.pushEphemeral(ctx, "", userID, map[string]any{"type": "m.presence", "sender": userID, "content": content})
	return nil
}

// getPresence answers GET /presence/{userId}/status. Like Synapse it shows
// any local user's presence; a user who never set one is offline.
func (a *API) getPresence(w http.ResponseWriter, r *http.Request) error {
	userID, err := ephVar(r, "userId")
	if err != nil {
		return err
	}
	if _, err := a.db.UserByID(r.Context(), userID); errors.Is(err, storage.ErrNotFound) {
		return mautrix.MNotFound.WithMessage("Unknown user %s", userID)
	} else if err != nil {
		return fmt.Errorf("loading user %s: %w", userID, err)
	}
	p, err := a.db.PresenceOf(r.Context(), userID)
	if errors.Is(err, storage.ErrNotFound) {
		return writeJSON(w, http.StatusOK, map[string]any{"presence": presenceOffline})
	} else if err != nil {
		return fmt.Errorf("reading presence of %s: %w", userID, err)
	}
	resp := map[string]any{
		"presence":         p.Presence,
		"last_active_ago":  max(time.Now().UnixMilli()-p.LastActiveTS, 0),
		"currently_active": p.CurrentlyActive,
	}
	if p.StatusMsg != nil {
		resp["status_msg"] = *p.StatusMsg
	}
	return writeJSON(w, http.StatusOK, resp)
}

// putPresence answers PUT /presence/{userId}/status. An omitted status_msg
// clears the message (as in Synapse).
func (a *API) putPresence(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	userID, err := ephVar(r, "userId")
	if err != nil {
		return err
	}
	if userID != s.UserID {
		return mautrix.MForbidden.WithMessage("Cannot set the presence of another user")
	}
	var body struct {
		Presence  *string `json:"presence"`
		StatusMsg *string `json:"status_msg"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if body.Presence == nil {
		return mautrix.MBadJSON.WithMessage("Missing required field 'presence'")
	}
	if err := a.writePresence(r.Context(), userID, *body.Presence, body.StatusMsg, false); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}
