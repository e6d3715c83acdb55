package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// registerRoomSearch registers POST /search.
func (a *API) registerRoomSearch(rt routes) {
	rt.client("/search", a.authed(a.rateLimited(a.search)), http.MethodPost)
}

// Search limits.
const (
	defaultSearchLimit   = 10
	maxSearchLimit       = 100
	defaultSearchContext = 5
	maxSearchContext     = 100
)

type searchRequest struct {
	SearchCategories struct {
		RoomEvents *roomEventsCriteria `json:"room_events"`
	} `json:"search_categories"`
}

type roomEventsCriteria struct {
	SearchTerm   *string         `json:"search_term"`
	Keys         []string        `json:"keys"`
	Filter       json.RawMessage `json:"filter"`
	OrderBy      string          `json:"order_by"`
	EventContext *struct {
		BeforeLimit    *int `json:"before_limit"`
		AfterLimit     *int `json:"after_limit"`
		IncludeProfile bool `json:"include_profile"`
	} `json:"event_context"`
	IncludeState bool `json:"include_state"`
	Groupings    *struct {
		GroupBy []struct {
			Key string `json:"key"`
		} `json:"group_by"`
	} `json:"groupings"`
}

type searchResult struct {
	Rank    float64           `json:"rank"`
	Result  rooms.ClientEvent `json:"result"`
	Context *searchEventCtx   `json:"context,omitempty"`
}

type searchEventCtx struct {
	Start        string                     `json:"start"`
	End          string                     `json:"end"`
	EventsBefore []rooms.ClientEvent        `json:"events_before"`
	EventsAfter  []rooms.ClientEvent        `json:"events_after"`
	ProfileInfo  map[string]json.RawMessage `json:"profile_info,omitempty"`
}

type searchGroup struct {
	Results   []string `json:"results"`
	Order     int      `json:"order"`
	NextBatch string   `json:"next_batch,omitempty"`
}

type roomEventsResults struct {
	Count      int                               `json:"count"`
	Highlights []string                          `json:"highlights"`
	Results    []*searchResult                   `json:"results"`
	NextBatch  string                            `json:"next_batch,omitempty"`
	State      map[string][]rooms.ClientEvent    `json:"state,omitempty"`
	Groups     map[string]map[string]searchGroup `json:"groups,omitempty"`
}

// searchCursor is where a search page starts: an offset into rank order,
// or a position in recent order. Its token is "k<offset>" or "r<pos>".
type searchCursor struct {
	offset int
	before storage.StreamPos
}

func parseSearchToken(tok string, recent bool) (searchCursor, error) {
	var c searchCursor
	if tok == "" {
		return c, nil
	}
	n, err := strconv.ParseInt(tok[1:], 10, 64)
	switch {
	case err != nil || n < 0:
		return c, badParam("Invalid next_batch token")
	case recent && tok[0] == 'r':
		c.before = storage.StreamPos(n)
	case !recent && tok[0] == 'k':
		c.offset = int(n)
	default:
		return c, badParam("next_batch token does not match order_by")
	}
	return c, nil
}

func (c searchCursor) token(recent bool) string {
	if recent {
		return "r" + strconv.FormatInt(int64(c.before), 10)
	}
	return "k" + strconv.Itoa(c.offset)
}

// search is POST /search (room_events only): full-text search over message
// bodies in the rooms the user is in or has left (up to their departure),
// keeping only events history visibility lets them see.
func (a *API) search(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ctx := r.Context()
	var req searchRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	crit := req.SearchCategories.RoomEvents
	if crit == nil {
		return writeJSON(w, http.StatusOK, map[string]any{"search_categories": map[string]any{}})
	}
	if crit.SearchTerm == nil {
		return missingParam("Missing search_term")
	}
	searchBody := len(crit.Keys) == 0
	for _, k := range crit.Keys {
		switch k {
		case "content.body":
			searchBody = true
		case "content.name", "content.topic":
		default:
			return badParam("Unknown search key %q", k)
		}
	}
	recent := false
	switch crit.OrderBy {
	case "", "rank":
	case "recent":
		recent = true
	default:
		return badParam("order_by must be \"rank\" or \"recent\"")
	}
	fp, err := parseRoomEventFilter(string(crit.Filter))
	if err != nil {
		return err
	}
	limit := defaultSearchLimit
	if fp.Limit > 0 {
		limit = min(fp.Limit, maxSearchLimit)
	}
	cursor, err := parseSearchToken(r.URL.Query().Get("next_batch"), recent)
	if err != nil {
		return err
	}
	groupBy := map[string]bool{}
	if crit.Groupings != nil {
		for _, g := range crit.Groupings.GroupBy {
			if g.Key != "room_id" && g.Key != "sender" {
				return badParam("Unsupported group_by key %q", g.Key)
			}
			groupBy[g.Key] = true
		}
	}
	beforeLimit, afterLimit := defaultSearchContext, defaultSearchContext
	if ec := crit.EventContext; ec != nil {
		if ec.BeforeLimit != nil {
			beforeLimit = *ec.BeforeLimit
		}
		if ec.AfterLimit != nil {
			afterLimit = *ec.AfterLimit
		}
		if beforeLimit < 0 || afterLimit < 0 {
			return badParam("event_context limits must not be negative")
		}
		beforeLimit, afterLimit = min(beforeLimit, maxSearchContext), min(afterLimit, maxSearchContext)
	}

	readers, err := a.searchableRooms(ctx, s.UserID, fp)
	if err != nil {
		return err
	}
	q := storage.SearchQuery{
		Term: *crit.SearchTerm, Rooms: map[string]storage.StreamPos{}, Filter: storageEventFilter(fp),
		OrderByRecent: recent,
	}
	for id, rr := range readers {
		q.Rooms[id] = rr.until
	}
	if !searchBody {
		q.Rooms = nil // only content.body is indexed
	}
	res := roomEventsResults{Highlights: storage.SearchTokens(*crit.SearchTerm), Results: []*searchResult{}}
	if res.Highlights == nil {
		res.Highlights = []string{}
	}
	if res.Count, err = a.db.CountSearch(ctx, q); err != nil {
		return err
	}
	visCache := map[string]*rooms.Visibility{}
	visFor := func(roomID string) (*rooms.Visibility, error) {
		if v := visCache[roomID]; v != nil {
			return v, nil
		}
		v, err := a.rooms.VisibilityFor(ctx, roomID, s.UserID)
		if err != nil {
			return nil, err
		}
		visCache[roomID] = v
		return v, nil
	}
	more := false
	var hits []storage.SearchHit
rounds:
	for round := 0; round < maxPageRounds; round++ {
		batch := limit - len(hits) + 1
		q.Offset, q.Before, q.Limit = cursor.offset, cursor.before, batch
		page, err := a.db.SearchEvents(ctx, q)
		if err != nil {
			return err
		}
		for _, h := range page {
			if len(hits) == limit {
				more = true
				break rounds
			}
			cursor.offset++
			cursor.before = h.Event.Pos
			vis, err := visFor(h.Event.RoomID)
			if err != nil {
				return err
			}
			if ok, err := vis.CanSee(ctx, h.Event); err != nil {
				return err
			} else if ok {
				hits = append(hits, h)
			}
		}
		if len(page) < batch {
			break
		}
		if round == maxPageRounds-1 {
			more = true
		}
	}
	if more {
		res.NextBatch = cursor.token(recent)
	}
	// Render room by room: bundled relations stop at each room's reading limit.
	rendered := make(map[string]rooms.ClientEvent, len(hits))
	byRoom := map[string][]*storage.Event{}
	for _, h := range hits {
		byRoom[h.Event.RoomID] = append(byRoom[h.Event.RoomID], h.Event)
	}
	for roomID, evs := range byRoom {
		out, err := a.renderEvents(ctx, viewerOf(s), evs, readers[roomID].until)
		if err != nil {
			return err
		}
		for i, e := range evs {
			rendered[e.EventID] = out[i]
		}
	}
	for _, h := range hits {
		sr := &searchResult{Rank: h.Rank, Result: rendered[h.Event.EventID]}
		if crit.EventContext != nil {
			vis, err := visFor(h.Event.RoomID)
			if err != nil {
				return err
			}
			if sr.Context, err = a.searchContext(ctx, s, readers[h.Event.RoomID], vis, h.Event, beforeLimit, afterLimit, crit.EventContext.IncludeProfile); err != nil {
				return err
			}
		}
		res.Results = append(res.Results, sr)
	}
	if crit.IncludeState {
		res.State = map[string][]rooms.ClientEvent{}
		for _, h := range hits {
			roomID := h.Event.RoomID
			if _, done := res.State[roomID]; done {
				continue
			}
			state, err := a.readableState(ctx, readers[roomID])
			if err != nil {
				return err
			}
			res.State[roomID] = rooms.ToClientEvents(state, viewerOf(s), rooms.FormatOptions{})
		}
	}
	if len(groupBy) > 0 {
		res.Groups = map[string]map[string]searchGroup{}
		for key := range groupBy {
			groups := map[string]searchGroup{}
			for _, h := range hits {
				v := h.Event.RoomID
				if key == "sender" {
					v = h.Event.Sender
				}
				g, ok := groups[v]
				if !ok {
					g.Order = len(groups) + 1
					g.NextBatch = res.NextBatch
				}
				g.Results = append(g.Results, h.Event.EventID)
				groups[v] = g
			}
			res.Groups[key] = groups
		}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"search_categories": map[string]any{"room_events": res}})
}

// searchableRooms returns the rooms a user's search covers, each with its
// reader: rooms they are joined to, and rooms they were joined to and left
// (read up to their departure) without forgetting. The filter's rooms and
// not_rooms narrow them.
func (a *API) searchableRooms(ctx context.Context, userID string, fp *mautrix.FilterPart) (map[string]*roomReader, error) {
	ms, err := a.db.MembershipsOfUser(ctx, userID, spec.Join, spec.Leave, spec.Ban)
	if err != nil {
		return nil, err
	}
	out := map[string]*roomReader{}
	for _, m := range ms {
		if m.Forgotten || !filterAllowsRoom(fp, m.RoomID) {
			continue
		}
		rr := &roomReader{roomID: m.RoomID}
		if m.Membership != spec.Join {
			joined, err := a.db.EverJoined(ctx, m.RoomID, userID)
			if err != nil {
				return nil, err
			}
			if !joined {
				continue
			}
			rr.until = m.Pos
		}
		out[m.RoomID] = rr
	}
	return out, nil
}

// searchContext builds a search result's event_context.
func (a *API) searchContext(ctx context.Context, s *Session, rr *roomReader, vis *rooms.Visibility, ev *storage.Event,
	beforeLimit, afterLimit int, includeProfile bool) (*searchEventCtx, error) {
	roomID := ev.RoomID
	before, beforeNext, _, err := collectPage(ctx, ev.Pos-1, true, beforeLimit,
		func(ctx context.Context, cur storage.StreamPos, n int) ([]*storage.Event, error) {
			if cur <= 0 {
				return nil, nil
			}
			return a.db.RoomEvents(ctx, roomID, cur, 0, true, n, nil)
		}, vis.CanSee)
	if err != nil {
		return nil, err
	}
	afterTo := rr.clampForwards(0)
	after, afterNext, _, err := collectPage(ctx, ev.Pos, false, afterLimit,
		func(ctx context.Context, cur storage.StreamPos, n int) ([]*storage.Event, error) {
			if afterTo > 0 && cur >= afterTo {
				return nil, nil
			}
			return a.db.RoomEvents(ctx, roomID, cur, afterTo, false, n, nil)
		}, vis.CanSee)
	if err != nil {
		return nil, err
	}
	viewer := viewerOf(s)
	c := &searchEventCtx{
		Start:        rooms.StreamToken(beforeNext),
		End:          rooms.StreamToken(afterNext),
		EventsBefore: rooms.ToClientEvents(before, viewer, rooms.FormatOptions{}),
		EventsAfter:  rooms.ToClientEvents(after, viewer, rooms.FormatOptions{}),
	}
	if includeProfile {
		senders := []string{ev.Sender}
		for _, e := range before {
			senders = append(senders, e.Sender)
		}
		for _, e := range after {
			senders = append(senders, e.Sender)
		}
		members, err := a.lazyMembers(ctx, rr, senders, 0)
		if err != nil {
			return nil, err
		}
		c.ProfileInfo = map[string]json.RawMessage{}
		for _, m := range members {
			content := gjson.GetBytes(m.PDUJSON, "content")
			profile := map[string]any{}
			if dn := content.Get("displayname"); dn.Type == gjson.String {
				profile["displayname"] = dn.Str
			}
			if av := content.Get("avatar_url"); av.Type == gjson.String {
				profile["avatar_url"] = av.Str
			}
			b, _ := json.Marshal(profile)
			c.ProfileInfo[*m.StateKey] = b
		}
	}
	return c, nil
}
