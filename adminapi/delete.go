package adminapi

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// Room deletion (shutdown + purge) and history purges. Both run as
// background tasks whose status is kept in memory for a day after they end
// (as Synapse keeps them "up to 24 hours or until restart").

// Task statuses, Synapse's.
const (
	statusScheduled = "scheduled"
	statusActive    = "active"
	statusComplete  = "complete"
	statusFailed    = "failed"
)

// taskRetention is how long a finished task's status stays queryable.
const taskRetention = 24 * time.Hour

// Task kinds.
const (
	kindDeleteRoom   = "shutdown_and_purge_room"
	kindPurgeHistory = "purge_history"
)

// shutdownResult is the shutdown_room object of a delete status (and the
// body of the synchronous v1 DELETE).
type shutdownResult struct {
	KickedUsers       []string `json:"kicked_users"`
	FailedToKickUsers []string `json:"failed_to_kick_users"`
	LocalAliases      []string `json:"local_aliases"`
	NewRoomID         *string  `json:"new_room_id"`
}

// task is one background job.
type task struct {
	ID       string
	Kind     string
	RoomID   string
	Status   string
	Error    string
	Result   *shutdownResult
	created  time.Time
	finished time.Time
}

// taskStore keeps tasks by id.
type taskStore struct {
	mu    sync.Mutex
	tasks map[string]*task
}

func newTaskStore() *taskStore { return &taskStore{tasks: make(map[string]*task)} }

// sweepLocked drops tasks finished more than taskRetention ago.
func (ts *taskStore) sweepLocked(now time.Time) {
	for id, t := range ts.tasks {
		if !t.finished.IsZero() && now.Sub(t.finished) > taskRetention {
			delete(ts.tasks, id)
		}
	}
}

// start registers a new task; for room deletions it refuses a second one
// while one for the same room is still running.
func (ts *taskStore) start(kind, roomID string) (*task, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	now := time.Now()
	ts.sweepLocked(now)
	for _, t := range ts.tasks {
		if t.RoomID == roomID && t.finished.IsZero() {
			return nil, unknownErr("Purge already in progress for %s", roomID)
		}
	}
	t := &task{ID: rooms.RandomString(16), Kind: kind, RoomID: roomID, Status: statusScheduled, created: now}
	ts.tasks[t.ID] = t
	return t, nil
}

// update changes a task under the lock.
func (ts *taskStore) update(t *task, fn func(t *task)) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	fn(t)
}

// get returns a copy of a task.
func (ts *taskStore) get(id string) (task, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.sweepLocked(time.Now())
	t, ok := ts.tasks[id]
	if !ok {
		return task{}, false
	}
	return *t, true
}

// forRoom returns copies of a room's tasks of one kind, oldest first.
func (ts *taskStore) forRoom(roomID, kind string) []task {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.sweepLocked(time.Now())
	var out []task
	for _, t := range ts.tasks {
		if t.RoomID == roomID && t.Kind == kind {
			out = append(out, *t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].created.Before(out[j].created) })
	return out
}

// deleteParams are the body of DELETE /rooms/{roomId} (v1 and v2).
type deleteParams struct {
	roomID        string
	requester     string
	newRoomUserID string
	roomName      string
	message       string
	block         bool
	purge         bool
	forcePurge    bool
}

// Synapse's defaults for the room the old room's members are moved to.
const (
	defaultNewRoomName = "Content Violation Notification"
	defaultNewRoomText = "Sharing illegal content on this server is not permitted and rooms in violation will be blocked."
)

// parseDelete reads and checks a room deletion request; unknown rooms are
// refused (404) unless they are only to be blocked.
func (a *API) parseDelete(r *http.Request) (*deleteParams, error) {
	b, err := readBody(r, false)
	if err != nil {
		return nil, err
	}
	p := &deleteParams{requester: callerFrom(r.Context()).UserID, roomName: defaultNewRoomName, message: defaultNewRoomText}
	if p.block, err = b.bool("block", false); err != nil {
		return nil, err
	}
	if p.purge, err = b.bool("purge", true); err != nil {
		return nil, err
	}
	if p.forcePurge, err = b.bool("force_purge", false); err != nil {
		return nil, err
	}
	if v, err := b.string("new_room_user_id"); err != nil {
		return nil, err
	} else if v != nil {
		if !validUserID(*v) || !a.isLocal(*v) {
			return nil, unknownErr("User must be our own: %s", *v)
		}
		p.newRoomUserID = *v
	}
	if v, err := b.string("room_name"); err != nil {
		return nil, err
	} else if v != nil {
		p.roomName = *v
	}
	if v, err := b.string("message"); err != nil {
		return nil, err
	} else if v != nil {
		p.message = *v
	}
	if p.roomID, err = roomIDVar(r); err != nil {
		return nil, err
	}
	if _, err := a.db.RoomByID(r.Context(), p.roomID); errors.Is(err, storage.ErrNotFound) {
		if !p.block {
			return nil, mautrix.MNotFound.WithMessage("Unknown room id %s", p.roomID)
		}
	} else if err != nil {
		return nil, err
	}
	return p, nil
}

// deleteRoomV2 is DELETE /_synapse/admin/v2/rooms/{roomId}: the deletion
// runs in the background; its status is at .../delete_status.
func (a *API) deleteRoomV2(w http.ResponseWriter, r *http.Request) error {
	p, err := a.parseDelete(r)
	if err != nil {
		return err
	}
	t, err := a.tasks.start(kindDeleteRoom, p.roomID)
	if err != nil {
		return err
	}
	err = a.goBackground(func() {
		ctx := context.Background()
		a.tasks.update(t, func(t *task) { t.Status = statusActive })
		res, err := a.deleteRoom(ctx, p, func(res *shutdownResult) {
			a.tasks.update(t, func(t *task) { t.Result = res })
		})
		a.tasks.update(t, func(t *task) {
			t.Result, t.finished = res, time.Now()
			if err != nil {
				t.Status, t.Error = statusFailed, err.Error()
			} else {
				t.Status = statusComplete
			}
		})
		if err != nil {
			a.log.ErrorContext(ctx, "room deletion failed", "room_id", p.roomID, "delete_id", t.ID, "err", err)
		}
	})
	if err != nil {
		a.tasks.update(t, func(t *task) { t.Status, t.Error, t.finished = statusFailed, err.Error(), time.Now() })
		return err
	}
	a.log.InfoContext(r.Context(), "room deletion started", "room_id", p.roomID, "delete_id", t.ID, "by", p.requester,
		"block", p.block, "purge", p.purge)
	return writeJSON(w, http.StatusOK, map[string]string{"delete_id": t.ID})
}

// deleteRoomV1 is DELETE /_synapse/admin/v1/rooms/{roomId}: the same
// deletion, answered when it is done.
func (a *API) deleteRoomV1(w http.ResponseWriter, r *http.Request) error {
	p, err := a.parseDelete(r)
	if err != nil {
		return err
	}
	t, err := a.tasks.start(kindDeleteRoom, p.roomID)
	if err != nil {
		return err
	}
	res, err := a.deleteRoom(context.WithoutCancel(r.Context()), p, nil)
	a.tasks.update(t, func(t *task) {
		t.Result, t.finished = res, time.Now()
		if err != nil {
			t.Status, t.Error = statusFailed, err.Error()
		} else {
			t.Status = statusComplete
		}
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, res)
}

// deleteRoom shuts a room down as Synapse does: block it (if asked), make
// a new room for its members (if new_room_user_id), make every local member
// leave (and join the new room), move or drop its aliases, take it out of
// the directory, then purge it (unless purge is false). progress, when set,
// receives the result once the members are out.
func (a *API) deleteRoom(ctx context.Context, p *deleteParams, progress func(*shutdownResult)) (*shutdownResult, error) {
	res := &shutdownResult{KickedUsers: []string{}, FailedToKickUsers: []string{}, LocalAliases: []string{}}
	if p.block {
		if err := a.db.BlockRoom(ctx, p.roomID, p.requester); err != nil {
			return res, err
		}
	}
	if _, err := a.db.RoomByID(ctx, p.roomID); errors.Is(err, storage.ErrNotFound) {
		return res, nil // an unknown room can only be blocked
	} else if err != nil {
		return res, err
	}
	var newRoomID string
	if p.newRoomUserID != "" {
		name := p.roomName
		var err error
		newRoomID, err = a.rooms.CreateRoom(ctx, rooms.CreateRoomRequest{
			Creator: p.newRoomUserID, Preset: rooms.PresetPublicChat, Name: &name,
			PowerLevelOverride: []byte(`{"users_default": -10}`),
		})
		if err != nil {
			return res, err
		}
		res.NewRoomID = &newRoomID
		if _, err := a.rooms.Send(ctx, newRoomID, rooms.EventRequest{Sender: p.newRoomUserID, Type: "m.room.message",
			Content: mustJSON(map[string]string{"msgtype": "m.text", "body": p.message})}); err != nil {
			return res, err
		}
	}
	kicked, failed, err := a.rooms.RemoveLocalMembers(ctx, p.roomID)
	if err != nil {
		return res, err
	}
	res.KickedUsers, res.FailedToKickUsers = kicked, failed
	for _, u := range kicked {
		if err := a.db.ForgetRoom(ctx, p.roomID, u); err != nil {
			return res, err
		}
		if newRoomID == "" {
			continue
		}
		req := rooms.MembershipRequest{Sender: u, Target: u, Membership: spec.Join}
		if usr, err := a.db.UserByID(ctx, u); err == nil {
			req.DisplayName, req.AvatarURL = usr.DisplayName, usr.AvatarURL
		}
		if _, err := a.rooms.ChangeMembership(ctx, newRoomID, req); err != nil {
			a.log.WarnContext(ctx, "room shutdown: joining new room failed", "room_id", newRoomID, "user_id", u, "err", err)
		}
	}
	if newRoomID != "" {
		res.LocalAliases, err = a.db.MoveAliases(ctx, p.roomID, newRoomID)
		if err == nil && len(res.LocalAliases) > 0 {
			_, err = a.rooms.Send(ctx, newRoomID, rooms.EventRequest{Sender: p.newRoomUserID, Type: spec.MRoomCanonicalAlias,
				StateKey: rooms.StrPtr(""), Content: mustJSON(map[string]string{"alias": res.LocalAliases[0]})})
		}
	} else {
		res.LocalAliases, err = a.db.DeleteRoomAliases(ctx, p.roomID)
	}
	if err != nil {
		return res, err
	}
	if res.LocalAliases == nil {
		res.LocalAliases = []string{}
	}
	if err := a.db.SetRoomPublished(ctx, p.roomID, false); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return res, err
	}
	if progress != nil {
		cp := *res
		progress(&cp)
	}
	if p.purge {
		n, err := a.rooms.PurgeRoom(ctx, p.roomID, p.forcePurge)
		if err != nil {
			return res, err
		}
		a.log.InfoContext(ctx, "room purged", "room_id", p.roomID, "events", n)
	}
	// Into the stream, so onRoomDeleted hooks fire for admin deletions too.
	notifier := a.rooms.Notifier()
	if _, err := a.db.RecordRoomDeleted(ctx, p.roomID, p.requester, func(pos storage.StreamPos) {
		notifier.Advance(pos, rooms.Wake{Rooms: []string{p.roomID}})
	}); err != nil {
		return res, err
	}
	return res, nil
}

// deleteStatus renders a deletion task.
func deleteStatus(t task) map[string]any {
	out := map[string]any{"delete_id": t.ID, "room_id": t.RoomID, "status": t.Status, "shutdown_room": t.Result}
	if t.Result == nil {
		out["shutdown_room"] = shutdownResult{KickedUsers: []string{}, FailedToKickUsers: []string{}, LocalAliases: []string{}}
	}
	if t.Error != "" {
		out["error"] = t.Error
	}
	return out
}

// deleteStatusByRoom is GET /_synapse/admin/v2/rooms/{roomId}/delete_status.
func (a *API) deleteStatusByRoom(w http.ResponseWriter, r *http.Request) error {
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	ts := a.tasks.forRoom(roomID, kindDeleteRoom)
	if len(ts) == 0 {
		return mautrix.MNotFound.WithMessage("No delete task for room_id '%s' found", roomID)
	}
	results := make([]map[string]any, 0, len(ts))
	for _, t := range ts {
		results = append(results, deleteStatus(t))
	}
	return writeJSON(w, http.StatusOK, map[string]any{"results": results})
}

// deleteStatusByID is GET /_synapse/admin/v2/rooms/delete_status/{deleteId}.
func (a *API) deleteStatusByID(w http.ResponseWriter, r *http.Request) error {
	id, err := pathVar(r, "deleteId")
	if err != nil {
		return err
	}
	t, ok := a.tasks.get(id)
	if !ok || t.Kind != kindDeleteRoom {
		return mautrix.MNotFound.WithMessage("delete id '%s' not found", id)
	}
	return writeJSON(w, http.StatusOK, deleteStatus(t))
}

// purgeHistory is POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]:
// delete the room's messages before an event (kept) or before a time.
// State events are always kept, and so, unless delete_local_events is set,
// are events sent by local users — which here is every event, as in
// Synapse on a server without federation.
func (a *API) purgeHistory(w http.ResponseWriter, r *http.Request) error {
	b, err := readBody(r, true)
	if err != nil {
		return err
	}
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return err
	}
	deleteLocal, err := b.bool("delete_local_events", false)
	if err != nil {
		return err
	}
	ctx := r.Context()
	eventID, err := pathVar(r, "eventId")
	if err != nil {
		return err
	}
	if eventID == "" {
		v, err := b.string("purge_up_to_event_id")
		if err != nil {
			return err
		}
		if v != nil {
			eventID = *v
		}
	}
	if _, err := a.db.RoomByID(ctx, roomID); errors.Is(err, storage.ErrNotFound) {
		return errRoomNotFound
	} else if err != nil {
		return err
	}
	var before storage.StreamPos
	switch {
	case eventID != "":
		ev, err := a.db.EventByID(ctx, eventID)
		if errors.Is(err, storage.ErrNotFound) {
			return mautrix.MNotFound.WithMessage("Could not find event %s", eventID)
		} else if err != nil {
			return err
		}
		if ev.RoomID != roomID {
			return unknownErr("Event is for wrong room.")
		}
		before = ev.Pos
	case b.has("purge_up_to_ts"):
		ts, err := b.int("purge_up_to_ts", func() error { return badJSON("purge_up_to_ts must be an int") })
		if err != nil {
			return err
		}
		if ts == nil {
			return badJSON("purge_up_to_ts must be an int")
		}
		ev, err := a.db.LastRoomEventBefore(ctx, roomID, *ts)
		if errors.Is(err, storage.ErrNotFound) {
			return mautrix.MNotFound.WithMessage("there is no event to be purged")
		} else if err != nil {
			return err
		}
		before = ev.Pos // that event is kept, everything older goes
	default:
		return badJSON("must specify purge_up_to_event_id or purge_up_to_ts")
	}
	t, err := a.tasks.start(kindPurgeHistory, roomID)
	if err != nil {
		return err
	}
	err = a.goBackground(func() {
		ctx := context.Background()
		a.tasks.update(t, func(t *task) { t.Status = statusActive })
		var n int64
		var err error
		if deleteLocal { // every event is local: without the flag nothing may go
			n, err = a.rooms.PurgeHistory(ctx, roomID, before)
		}
		a.tasks.update(t, func(t *task) {
			t.finished = time.Now()
			if err != nil {
				t.Status, t.Error = statusFailed, err.Error()
			} else {
				t.Status = statusComplete
			}
		})
		if err != nil {
			a.log.ErrorContext(ctx, "history purge failed", "room_id", roomID, "purge_id", t.ID, "err", err)
		} else {
			a.log.InfoContext(ctx, "history purged", "room_id", roomID, "purge_id", t.ID, "events", n)
		}
	})
	if err != nil {
		a.tasks.update(t, func(t *task) { t.Status, t.Error, t.finished = statusFailed, err.Error(), time.Now() })
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"purge_id": t.ID})
}

// purgeHistoryStatus is GET /_synapse/admin/v1/purge_history_status/{purgeId}.
func (a *API) purgeHistoryStatus(w http.ResponseWriter, r *http.Request) error {
	id, err := pathVar(r, "purgeId")
	if err != nil {
		return err
	}
	t, ok := a.tasks.get(id)
	if !ok || t.Kind != kindPurgeHistory {
		return mautrix.MNotFound.WithMessage("purge id '%s' not found", id)
	}
	status := t.Status
	if status != statusComplete && status != statusFailed {
		status = statusActive
	}
	out := map[string]any{"status": status}
	if t.Error != "" {
		out["error"] = t.Error
	}
	return writeJSON(w, http.StatusOK, out)
}
