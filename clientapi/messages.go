package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// registerRoomMessages registers history paging: /messages, /context,
// /relations and /threads.
func (a *API) registerRoomMessages(rt routes) {
	rt.client("/rooms/{roomId}/messages", a.authed(a.roomMessages), http.MethodGet)
	rt.client("/rooms/{roomId}/context/{eventId}", a.authed(a.eventContext), http.MethodGet)
	rt.v1("/rooms/{roomId}/relations/{eventId}", a.authed(a.relations), http.MethodGet)
	rt.v1("/rooms/{roomId}/relations/{eventId}/{relType}", a.authed(a.relations), http.MethodGet)
	rt.v1("/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", a.authed(a.relations), http.MethodGet)
	rt.v1("/rooms/{roomId}/threads", a.authed(a.threads), http.MethodGet)
}

// Paging limits.
const (
	defaultMessagesLimit  = 10
	maxMessagesLimit      = 1000
	defaultContextLimit   = 10
	maxContextLimit       = 100
	defaultRelationsLimit = 5
	maxRelationsLimit     = 1000
	defaultThreadsLimit   = 5
	maxThreadsLimit       = 100
	// maxPageRounds bounds how many batches one page reads while history
	// visibility hides events, so a long hidden stretch cannot pin a request.
	maxPageRounds = 20
	// relationsRecursionDepth is how deep recurse=true follows relations (the spec recommends at least 3).
	relationsRecursionDepth = 3
)

// queryLimit parses an optional non-negative integer query parameter,
// capped at max.
func queryLimit(r *http.Request, name string, def, max int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, badParam("%s must be a non-negative integer", name)
	}
	return min(n, max), nil
}

// queryToken parses an optional stream token query parameter.
func queryToken(r *http.Request, name string) (storage.StreamPos, bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, false, nil
	}
	pos, err := rooms.ParseStreamToken(v)
	if err != nil {
		return 0, false, badParam("Invalid %s token %q", name, v)
	}
	return pos, true, nil
}

// queryDir parses dir (b or f; def when absent).
func queryDir(r *http.Request, def string) (backwards bool, err error) {
	switch d := r.URL.Query().Get("dir"); d {
	case "":
		return def == "b", nil
	case "b":
		return true, nil
	case "f":
		return false, nil
	default:
		return false, badParam("dir must be \"b\" or \"f\"")
	}
}

// pageFetch reads up to n events strictly past cur in the paging direction.
type pageFetch func(ctx context.Context, cur storage.StreamPos, n int) ([]*storage.Event, error)

// posAfter is the paging position just past e: the next backwards page
// covers pos <= e.Pos-1, the next forwards page pos > e.Pos.
func posAfter(e *storage.Event, backwards bool) storage.StreamPos {
	if backwards {
		return e.Pos - 1
	}
	return e.Pos
}

// collectPage reads from `from` in batches until it has limit events that
// keep accepts or history runs out. next is where the following page
// starts (just past the last event read, or the last returned when the page
// filled up) and more says whether events may remain there.
func collectPage(ctx context.Context, from storage.StreamPos, backwards bool, limit int, fetch pageFetch,
	keep func(context.Context, *storage.Event) (bool, error)) (out []*storage.Event, next storage.StreamPos, more bool, err error) {
	next = from
	if limit <= 0 {
		return nil, next, true, nil
	}
	for round := 0; round < maxPageRounds; round++ {
		want := limit - len(out)
		batch := want + 1 // one extra tells whether anything remains
		if round > 0 {
			batch = max(batch, 2*want) // events were hidden: read further ahead
		}
		rows, err := fetch(ctx, next, batch)
		if err != nil {
			return nil, 0, false, err
		}
		for _, e := range rows {
			if len(out) == limit {
				return out, next, true, nil
			}
			ok, err := keep(ctx, e)
			if err != nil {
				return nil, 0, false, err
			}
			next = posAfter(e, backwards)
			if ok {
				out = append(out, e)
			}
		}
		if len(rows) < batch {
			return out, next, false, nil
		}
	}
	return out, next, true, nil
}

// renderEvents formats events for a viewer with the spec's bundled
// aggregations in unsigned["m.relations"]: m.thread (latest_event, count,
// current_user_participated), m.replace (the latest edit by the original
// sender) and m.reference (the referencing event ids). Relations after
// maxPos (when > 0) are ignored, for readers who left the room.
func (a *API) renderEvents(ctx context.Context, viewer rooms.Viewer, evs []*storage.Event, maxPos storage.StreamPos) ([]rooms.ClientEvent, error) {
	out := make([]rooms.ClientEvent, len(evs))
	byRoom := map[string][]string{}
	for i, e := range evs {
		out[i] = rooms.ToClientEvent(e, viewer, rooms.FormatOptions{})
		if e.RedactedBy == nil && e.StateKey == nil {
			byRoom[e.RoomID] = append(byRoom[e.RoomID], e.EventID)
		}
	}
	byID := make(map[string]*storage.Event, len(evs))
	for _, e := range evs {
		byID[e.EventID] = e
	}
	rels := map[string]map[string]any{} // event id -> rel type -> aggregation
	add := func(eventID, relType string, v any) {
		if rels[eventID] == nil {
			rels[eventID] = map[string]any{}
		}
		rels[eventID][relType] = v
	}
	for roomID, ids := range byRoom {
		threads, err := a.db.ThreadSummaries(ctx, roomID, viewer.UserID, ids, maxPos)
		if err != nil {
			return nil, err
		}
		if len(threads) > 0 {
			positions := make([]storage.StreamPos, 0, len(threads))
			for _, t := range threads {
				positions = append(positions, t.LatestPos)
			}
			latest, err := a.db.EventsByPos(ctx, positions)
			if err != nil {
				return nil, err
			}
			byPos := make(map[storage.StreamPos]*storage.Event, len(latest))
			for _, e := range latest {
				byPos[e.Pos] = e
			}
			for root, t := range threads {
				le := byPos[t.LatestPos]
				if le == nil {
					continue
				}
				add(root, "m.thread", map[string]any{
					"latest_event":              rooms.ToClientEvent(le, viewer, rooms.FormatOptions{}),
					"count":                     t.Count,
					"current_user_participated": t.Participated,
				})
			}
		}
		edits, err := a.db.RelatedEvents(ctx, roomID, "m.replace", ids, maxPos)
		if err != nil {
			return nil, err
		}
		refs, err := a.db.RelatedEvents(ctx, roomID, "m.reference", ids, maxPos)
		if err != nil {
			return nil, err
		}
		latestEdit := map[string]*storage.Event{}
		for _, ed := range edits { // oldest first: the last one wins
			orig := byID[*ed.RelatesTo]
			if orig != nil && orig.Sender == ed.Sender && orig.Type == ed.Type {
				latestEdit[orig.EventID] = ed
			}
		}
		for orig, ed := range latestEdit {
			add(orig, "m.replace", rooms.ToClientEvent(ed, viewer, rooms.FormatOptions{}))
		}
		refChunks := map[string][]map[string]string{}
		for _, ref := range refs {
			refChunks[*ref.RelatesTo] = append(refChunks[*ref.RelatesTo], map[string]string{"event_id": ref.EventID})
		}
		for orig, chunk := range refChunks {
			add(orig, "m.reference", map[string]any{"chunk": chunk})
		}
	}
	for i := range out {
		agg := rels[out[i].EventID]
		if agg == nil {
			continue
		}
		b, err := json.Marshal(agg)
		if err != nil {
			return nil, err
		}
		unsigned, err := sjson.SetRawBytes(out[i].Unsigned, `m\.relations`, b)
		if err != nil {
			return nil, err
		}
		out[i].Unsigned = unsigned
	}
	return out, nil
}

// lazyMembers returns the m.room.member events of the given senders, as of
// the reader's view of the room (current, or at their departure) or at pos
// when pos > 0.
func (a *API) lazyMembers(ctx context.Context, rr *roomReader, senders []string, at storage.StreamPos) ([]*storage.Event, error) {
	if at == 0 || (rr.until > 0 && at > rr.until) {
		at = rr.until
	}
	seen := map[string]bool{}
	var out []*storage.Event
	for _, u := range senders {
		if seen[u] {
			continue
		}
		seen[u] = true
		var ev *storage.Event
		var err error
		if at > 0 {
			ev, err = a.db.StateEventAt(ctx, rr.roomID, spec.MRoomMember, u, at)
		} else {
			ev, err = a.db.CurrentStateEvent(ctx, rr.roomID, spec.MRoomMember, u)
		}
		if errors.Is(err, storage.ErrNotFound) {
			continue
		} else if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// visibilityKeep adapts a Visibility to collectPage.
func visibilityKeep(vis *rooms.Visibility) func(context.Context, *storage.Event) (bool, error) {
	return vis.CanSee
}

type messagesResponse struct {
	Start string              `json:"start"`
	End   string              `json:"end,omitempty"`
	Chunk []rooms.ClientEvent `json:"chunk"`
	State []rooms.ClientEvent `json:"state,omitempty"`
}

// roomMessages is GET /rooms/{roomId}/messages. Tokens are rooms.StreamToken
// positions, the same as /sync's prev_batch: backwards from s<P> returns
// pos <= P newest first, forwards pos > P oldest first.
func (a *API) roomMessages(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ctx := r.Context()
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	backwards, err := queryDir(r, "f") // Synapse's default when dir is absent
	if err != nil {
		return err
	}
	from, hasFrom, err := queryToken(r, "from")
	if err != nil {
		return err
	}
	to, hasTo, err := queryToken(r, "to")
	if err != nil {
		return err
	}
	fp, err := parseRoomEventFilter(r.URL.Query().Get("filter"))
	if err != nil {
		return err
	}
	def := defaultMessagesLimit
	if fp.Limit > 0 {
		def = min(fp.Limit, maxMessagesLimit)
	}
	limit, err := queryLimit(r, "limit", def, maxMessagesLimit)
	if err != nil {
		return err
	}
	rr, err := a.readAccess(ctx, roomID, s.UserID, true)
	if err != nil {
		return err
	}
	if !hasFrom && backwards {
		from = a.rooms.Notifier().Committed()
	}
	start := rooms.StreamToken(from)
	if hasFrom {
		start = r.URL.Query().Get("from")
	}
	if backwards {
		from = rr.clampBackwards(from)
	} else {
		if !hasTo {
			to = 0
		}
		if hasTo && to <= from {
			return writeJSON(w, http.StatusOK, messagesResponse{Start: start, Chunk: []rooms.ClientEvent{}})
		}
		to = rr.clampForwards(to)
		if to > 0 && to <= from {
			return writeJSON(w, http.StatusOK, messagesResponse{Start: start, Chunk: []rooms.ClientEvent{}})
		}
	}
	vis, err := a.rooms.VisibilityFor(ctx, roomID, s.UserID)
	if err != nil {
		return err
	}
	sf := storageEventFilter(fp)
	fetch := func(ctx context.Context, cur storage.StreamPos, n int) ([]*storage.Event, error) {
		if backwards && cur <= 0 {
			return nil, nil
		}
		return a.db.RoomEvents(ctx, roomID, cur, to, backwards, n, sf)
	}
	evs, next, more, err := collectPage(ctx, from, backwards, limit, fetch, visibilityKeep(vis))
	if err != nil {
		return err
	}
	chunk, err := a.renderEvents(ctx, viewerOf(s), evs, rr.until)
	if err != nil {
		return err
	}
	resp := messagesResponse{Start: start, Chunk: chunk}
	if more {
		resp.End = rooms.StreamToken(next)
	}
	if fp.LazyLoadMembers && len(evs) > 0 {
		senders := make([]string, len(evs))
		for i, e := range evs {
			senders[i] = e.Sender
		}
		members, err := a.lazyMembers(ctx, rr, senders, 0)
		if err != nil {
			return err
		}
		resp.State = rooms.ToClientEvents(members, viewerOf(s), rooms.FormatOptions{})
	}
	return writeJSON(w, http.StatusOK, resp)
}

type contextResponse struct {
	Start        string              `json:"start"`
	End          string              `json:"end"`
	Event        rooms.ClientEvent   `json:"event"`
	EventsBefore []rooms.ClientEvent `json:"events_before"`
	EventsAfter  []rooms.ClientEvent `json:"events_after"`
	State        []rooms.ClientEvent `json:"state"`
}

// roomEventForReader loads an event of the room that the user may see;
// errEventNotFound otherwise.
func (a *API) roomEventForReader(ctx context.Context, vis *rooms.Visibility, roomID, eventID string) (*storage.Event, error) {
	ev, err := a.db.EventByID(ctx, eventID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, errEventNotFound
	} else if err != nil {
		return nil, err
	}
	if ev.RoomID != roomID {
		return nil, errEventNotFound
	}
	ok, err := vis.CanSee(ctx, ev)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errEventNotFound
	}
	return ev, nil
}

// eventContext is GET /rooms/{roomId}/context/{eventId}: the event with up to
// limit events around it (half before, half after) and the state at the
// last event returned.
func (a *API) eventContext(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ctx := r.Context()
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	eventID, err := eventIDVar(r)
	if err != nil {
		return err
	}
	limit, err := queryLimit(r, "limit", defaultContextLimit, maxContextLimit)
	if err != nil {
		return err
	}
	fp, err := parseRoomEventFilter(r.URL.Query().Get("filter"))
	if err != nil {
		return err
	}
	vis, err := a.rooms.VisibilityFor(ctx, roomID, s.UserID)
	if err != nil {
		return err
	}
	ev, err := a.roomEventForReader(ctx, vis, roomID, eventID)
	if err != nil {
		return err
	}
	rr, err := a.readAccess(ctx, roomID, s.UserID, true)
	if err != nil {
		if errors.Is(err, mautrix.MForbidden) {
			return errEventNotFound
		}
		return err
	}
	sf := storageEventFilter(fp)
	beforeLimit := limit / 2
	afterLimit := limit - beforeLimit
	before, beforeNext, _, err := collectPage(ctx, ev.Pos-1, true, beforeLimit,
		func(ctx context.Context, cur storage.StreamPos, n int) ([]*storage.Event, error) {
			if cur <= 0 {
				return nil, nil
			}
			return a.db.RoomEvents(ctx, roomID, cur, 0, true, n, sf)
		}, visibilityKeep(vis))
	if err != nil {
		return err
	}
	afterTo := rr.clampForwards(0)
	after, afterNext, _, err := collectPage(ctx, ev.Pos, false, afterLimit,
		func(ctx context.Context, cur storage.StreamPos, n int) ([]*storage.Event, error) {
			if afterTo > 0 && cur >= afterTo {
				return nil, nil
			}
			return a.db.RoomEvents(ctx, roomID, cur, afterTo, false, n, sf)
		}, visibilityKeep(vis))
	if err != nil {
		return err
	}
	last := ev.Pos
	if len(after) > 0 {
		last = after[len(after)-1].Pos
	}
	var state []*storage.Event
	if fp.LazyLoadMembers {
		var senders []string
		for _, e := range before {
			senders = append(senders, e.Sender)
		}
		senders = append(senders, ev.Sender)
		for _, e := range after {
			senders = append(senders, e.Sender)
		}
		state, err = a.lazyMembers(ctx, rr, senders, last)
	} else {
		state, err = a.db.StateAt(ctx, roomID, last)
	}
	if err != nil {
		return err
	}
	keptState := state[:0]
	for _, e := range state {
		if filterMatchesEvent(fp, e) {
			keptState = append(keptState, e)
		}
	}
	viewer := viewerOf(s)
	all := append(append(append([]*storage.Event{}, before...), ev), after...)
	rendered, err := a.renderEvents(ctx, viewer, all, rr.until)
	if err != nil {
		return err
	}
	resp := contextResponse{
		Start:        rooms.StreamToken(beforeNext),
		End:          rooms.StreamToken(afterNext),
		EventsBefore: rendered[:len(before)],
		Event:        rendered[len(before)],
		EventsAfter:  rendered[len(before)+1:],
		State:        rooms.ToClientEvents(keptState, viewer, rooms.FormatOptions{}),
	}
	if resp.State == nil {
		resp.State = []rooms.ClientEvent{}
	}
	return writeJSON(w, http.StatusOK, resp)
}

type relationsResponse struct {
	Chunk          []rooms.ClientEvent `json:"chunk"`
	NextBatch      string              `json:"next_batch,omitempty"`
	PrevBatch      string              `json:"prev_batch,omitempty"`
	RecursionDepth *int                `json:"recursion_depth,omitempty"`
}

// relations is GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]].
func (a *API) relations(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ctx := r.Context()
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	eventID, err := eventIDVar(r)
	if err != nil {
		return err
	}
	relType, err := roomVar(r, "relType")
	if err != nil {
		return err
	}
	eventType, err := roomVar(r, "eventType")
	if err != nil {
		return err
	}
	backwards, err := queryDir(r, "b")
	if err != nil {
		return err
	}
	from, hasFrom, err := queryToken(r, "from")
	if err != nil {
		return err
	}
	to, _, err := queryToken(r, "to")
	if err != nil {
		return err
	}
	limit, err := queryLimit(r, "limit", defaultRelationsLimit, maxRelationsLimit)
	if err != nil {
		return err
	}
	var depth *int
	switch v := r.URL.Query().Get("recurse"); v {
	case "":
	case "true", "false":
		d := 1
		if v == "true" {
			d = relationsRecursionDepth
		}
		depth = &d
	default:
		return badParam("recurse must be true or false")
	}
	vis, err := a.rooms.VisibilityFor(ctx, roomID, s.UserID)
	if err != nil {
		return err
	}
	if _, err := a.roomEventForReader(ctx, vis, roomID, eventID); err != nil {
		return err
	}
	rr, err := a.readAccess(ctx, roomID, s.UserID, true)
	if err != nil {
		if errors.Is(err, mautrix.MForbidden) {
			return errEventNotFound
		}
		return err
	}
	parents := []string{eventID}
	if depth != nil && *depth > 1 {
		level := parents
		for i := 1; i < *depth && len(level) > 0; i++ {
			if level, err = a.db.ChildEventIDs(ctx, roomID, level, maxRelationsLimit); err != nil {
				return err
			}
			parents = append(parents, level...)
		}
	}
	if !hasFrom {
		if backwards {
			from = a.rooms.Notifier().Committed()
		} else {
			from = 0
		}
	}
	if backwards {
		from = rr.clampBackwards(from)
	} else {
		to = rr.clampForwards(to)
	}
	fetch := func(ctx context.Context, cur storage.StreamPos, n int) ([]*storage.Event, error) {
		if (backwards && cur <= 0) || (!backwards && to > 0 && cur >= to) {
			return nil, nil
		}
		return a.db.Relations(ctx, storage.RelationsQuery{
			RoomID: roomID, Parents: parents, RelType: relType, EventType: eventType,
			From: cur, To: to, Backwards: backwards, Limit: n,
		})
	}
	evs, next, more, err := collectPage(ctx, from, backwards, limit, fetch, visibilityKeep(vis))
	if err != nil {
		return err
	}
	chunk, err := a.renderEvents(ctx, viewerOf(s), evs, rr.until)
	if err != nil {
		return err
	}
	resp := relationsResponse{Chunk: chunk, RecursionDepth: depth}
	if more {
		resp.NextBatch = rooms.StreamToken(next)
	}
	if hasFrom {
		resp.PrevBatch = r.URL.Query().Get("from")
	}
	return writeJSON(w, http.StatusOK, resp)
}

// threads is GET /_matrix/client/v1/rooms/{roomId}/threads: thread roots,
// most recently active first, each with its m.thread summary. The from
// token s<P> covers threads whose latest reply is at or before P.
func (a *API) threads(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ctx := r.Context()
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	include := r.URL.Query().Get("include")
	if include != "" && include != "all" && include != "participated" {
		return badParam("include must be \"all\" or \"participated\"")
	}
	from, hasFrom, err := queryToken(r, "from")
	if err != nil {
		return err
	}
	limit, err := queryLimit(r, "limit", defaultThreadsLimit, maxThreadsLimit)
	if err != nil {
		return err
	}
	if limit == 0 {
		limit = defaultThreadsLimit
	}
	rr, err := a.readAccess(ctx, roomID, s.UserID, true)
	if err != nil {
		return err
	}
	vis, err := a.rooms.VisibilityFor(ctx, roomID, s.UserID)
	if err != nil {
		return err
	}
	q := storage.ThreadsQuery{
		RoomID: roomID, UserID: s.UserID, ParticipatedOnly: include == "participated",
		MaxPos: rr.until, Limit: limit + 1,
	}
	if hasFrom {
		if from <= 0 {
			return writeJSON(w, http.StatusOK, map[string]any{"chunk": []rooms.ClientEvent{}})
		}
		q.Before = from + 1
	}
	summaries, err := a.db.Threads(ctx, q)
	if err != nil {
		return err
	}
	more := len(summaries) > limit
	if more {
		summaries = summaries[:limit]
	}
	ids := make([]string, len(summaries))
	for i, t := range summaries {
		ids[i] = t.RootID
	}
	roots, err := a.db.EventsByID(ctx, ids)
	if err != nil {
		return err
	}
	byID := make(map[string]*storage.Event, len(roots))
	for _, e := range roots {
		byID[e.EventID] = e
	}
	ordered := make([]*storage.Event, 0, len(summaries))
	for _, t := range summaries {
		root := byID[t.RootID]
		if root == nil || root.RoomID != roomID {
			continue
		}
		if ok, err := vis.CanSee(ctx, root); err != nil {
			return err
		} else if ok {
			ordered = append(ordered, root)
		}
	}
	chunk, err := a.renderEvents(ctx, viewerOf(s), ordered, rr.until)
	if err != nil {
		return err
	}
	resp := map[string]any{"chunk": chunk}
	if more {
		resp["next_batch"] = rooms.StreamToken(summaries[len(summaries)-1].LatestPos - 1)
	}
	return writeJSON(w, http.StatusOK, resp)
}
