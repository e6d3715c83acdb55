package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix/id"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// Wire format of the /sync response (spec: GET /_matrix/client/v3/sync).
type syncResponse struct {
	NextBatch                     string         `json:"next_batch"`
	Rooms                         syncRooms      `json:"rooms"`
	AccountData                   eventList      `json:"account_data"`
	Presence                      eventList      `json:"presence"`
	ToDevice                      eventList      `json:"to_device"`
	DeviceLists                   deviceLists    `json:"device_lists"`
	DeviceOneTimeKeysCount        map[string]int `json:"device_one_time_keys_count"`
	DeviceUnusedFallbackKeyTypes  []string       `json:"device_unused_fallback_key_types"`
	OrgMatrixMSC2732FallbackTypes []string       `json:"org.matrix.msc2732.device_unused_fallback_key_types,omitempty"`
}

type syncRooms struct {
	Join   map[string]*joinedRoom  `json:"join"`
	Invite map[string]*invitedRoom `json:"invite"`
	Leave  map[string]*leftRoom    `json:"leave"`
	Knock  map[string]any          `json:"knock"`
}

type eventList struct {
	Events []any `json:"events"`
}

type timeline struct {
	Events    []json.RawMessage `json:"events"`
	Limited   bool              `json:"limited"`
	PrevBatch string            `json:"prev_batch,omitempty"`
}

type stateList struct {
	Events []json.RawMessage `json:"events"`
}

type roomSummary struct {
	Heroes             []string `json:"m.heroes,omitempty"`
	JoinedMemberCount  *int     `json:"m.joined_member_count,omitempty"`
	InvitedMemberCount *int     `json:"m.invited_member_count,omitempty"`
}

type unreadCounts struct {
	NotificationCount int `json:"notification_count"`
	HighlightCount    int `json:"highlight_count"`
}

type joinedRoom struct {
	Summary             roomSummary  `json:"summary"`
	State               stateList    `json:"state"`
	Timeline            timeline     `json:"timeline"`
	Ephemeral           eventList    `json:"ephemeral"`
	AccountData         eventList    `json:"account_data"`
	UnreadNotifications unreadCounts `json:"unread_notifications"`
}

type invitedRoom struct {
	InviteState struct {
		Events []rooms.StrippedEvent `json:"events"`
	} `json:"invite_state"`
}

type leftRoom struct {
	State       stateList `json:"state"`
	Timeline    timeline  `json:"timeline"`
	AccountData eventList `json:"account_data"`
}

type deviceLists struct {
	Changed []string `json:"changed"`
	Left    []string `json:"left"`
}

// isEmpty reports whether a long-poll should keep waiting.
func (r *syncResponse) isEmpty() bool {
	return len(r.Rooms.Join) == 0 && len(r.Rooms.Invite) == 0 && len(r.Rooms.Leave) == 0 &&
		len(r.AccountData.Events) == 0 && len(r.Presence.Events) == 0 && len(r.ToDevice.Events) == 0 &&
		len(r.DeviceLists.Changed) == 0 && len(r.DeviceLists.Left) == 0
}

// maxToDevicePerSync bounds one response's to-device batch.
const maxToDevicePerSync = 100

// syncBuilder assembles one response for (user, device) from since to to.
type syncBuilder struct {
	a      *API
	req    *syncRequest
	viewer rooms.Viewer
	since  storage.StreamPos // 0 = initial sync
	to     storage.StreamPos
	resp   *syncResponse
	// users whose device lists the syncing user must hear about
	changed map[string]struct{}
	left    map[string]struct{}
	// toDevicePos is how far to-device messages have been delivered.
	toDevicePos storage.StreamPos
	// directChanged: something addressed to the user may have changed since
	// the token (account data, to-device, presence, device lists, keys).
	directChanged bool
}

func (a *API) buildSync(ctx context.Context, req *syncRequest, to storage.StreamPos) (*syncResponse, error) {
	s := req.session
	b := &syncBuilder{
		a: a, req: req, viewer: rooms.Viewer{UserID: s.UserID, DeviceID: s.DeviceID}, to: to,
		changed: map[string]struct{}{}, left: map[string]struct{}{},
		resp: &syncResponse{
			Rooms:       syncRooms{Join: map[string]*joinedRoom{}, Invite: map[string]*invitedRoom{}, Leave: map[string]*leftRoom{}, Knock: map[string]any{}},
			AccountData: eventList{Events: []any{}}, Presence: eventList{Events: []any{}}, ToDevice: eventList{Events: []any{}},
			DeviceLists: deviceLists{Changed: []string{}, Left: []string{}},
		},
	}
	if req.since != nil {
		b.since = req.since.Pos
	}
	n := a.rooms.Notifier()
	changes := n.ChangesSince(s.UserID, b.since)
	b.directChanged = b.since == 0 || req.fullState || changes.Direct
	var memberships []storage.Membership
	if b.since == 0 || req.fullState || changes.Membership {
		var err error
		if memberships, err = a.db.MembershipsOfUser(ctx, s.UserID); err != nil {
			return nil, err
		}
		// A membership row visible in the database has committed, and so
		// has every position before it: reading up to it is safe.
		for _, m := range memberships {
			if m.Pos > b.to {
				b.to = m.Pos
			}
		}
	} else {
		// The user's memberships have not changed since the token: every
		// room they are in now, they were in then (joined at or before since).
		for _, roomID := range n.JoinedRooms(s.UserID) {
			memberships = append(memberships, storage.Membership{RoomID: roomID, UserID: s.UserID, Membership: spec.Join, Pos: b.since})
		}
	}
	sharing := map[string]struct{}{s.UserID: {}}
	for _, m := range memberships {
		if !b.roomAllowed(m.RoomID) {
			continue
		}
		switch m.Membership {
		case spec.Join:
			if err := b.joinedRoom(ctx, m); err != nil {
				return nil, err
			}
			if b.directChanged {
				for _, u := range n.JoinedMembers(m.RoomID) {
					sharing[u] = struct{}{}
				}
			}
		case spec.Invite:
			if b.since == 0 || m.Pos > b.since {
				if err := b.invitedRoom(ctx, m); err != nil {
					return nil, err
				}
			}
		case spec.Leave, spec.Ban:
			if m.Forgotten {
				continue
			}
			if (b.since > 0 && m.Pos > b.since) || (b.req.filter.Room.IncludeLeave && (b.since == 0 || b.req.fullState)) {
				if err := b.leftRoom(ctx, m); err != nil {
					return nil, err
				}
			}
		}
	}
	if err := b.globalData(ctx, sharing); err != nil {
		return nil, err
	}
	b.resp.NextBatch = syncToken{Pos: b.to, ToDevice: b.toDevicePos}.String()
	return b.resp, nil
}

func (b *syncBuilder) roomAllowed(roomID string) bool {
	f := b.req.filter.Room
	if len(f.Rooms) > 0 && !slices.Contains(f.Rooms, id.RoomID(roomID)) {
		return false
	}
	return !slices.Contains(f.NotRooms, id.RoomID(roomID))
}

// timelineWindow loads the newest visible events of a room with
// lower < pos <= upper (limit+1 to detect "limited"). shared reports that
// the events came from the room's in-memory ring, whose event values every
// syncing member sees (so their rendering can be shared, see renderEvents).
func (b *syncBuilder) timelineWindow(ctx context.Context, roomID string, lower, upper storage.StreamPos, vis *rooms.Visibility) (evs []*storage.Event, limited, shared bool, err error) {
	limit := b.req.filter.Room.Timeline.Limit
	if lower > 0 {
		// The common long-poll case: the few events after the token are
		// still in memory.
		if recent, ok := b.a.rooms.RecentEvents(roomID, lower, upper); ok {
			var out []*storage.Event
			for _, e := range recent {
				if !filterMatchesEvent(b.req.filter.Room.Timeline, e) {
					continue
				}
				if ok, err := vis.CanSee(ctx, e); err != nil {
					return nil, false, false, err
				} else if ok {
					out = append(out, e)
				}
			}
			if len(out) > limit {
				return out[len(out)-limit:], true, true, nil
			}
			return out, false, true, nil
		}
	}
	f := storageEventFilter(b.req.filter.Room.Timeline)
	var out []*storage.Event
	cursor := upper
	// Pages until enough visible events are found (history visibility may hide some).
	for len(out) <= limit {
		page, err := b.a.db.RoomEvents(ctx, roomID, cursor, lower, true, limit+1, f)
		if err != nil {
			return nil, false, false, err
		}
		if len(page) == 0 {
			break
		}
		cursor = page[len(page)-1].Pos - 1
		visible, err := vis.Filter(ctx, page)
		if err != nil {
			return nil, false, false, err
		}
		out = append(out, visible...)
		if len(page) < limit+1 {
			break
		}
	}
	if len(out) > limit {
		out = out[:limit]
		limited = true
	}
	slices.Reverse(out)
	return out, limited, false, nil
}

// render renders events in the sync format for the syncing device.
func (b *syncBuilder) render(evs []*storage.Event) []json.RawMessage {
	return b.renderEvents(evs, false)
}

// renderEvents is render; with shared the events come from a room's
// in-memory ring: every member syncing after a send renders the same event
// values, so the part of the JSON that is the same for every viewer is
// built once and cached.
func (b *syncBuilder) renderEvents(evs []*storage.Event, shared bool) []json.RawMessage {
	out := make([]json.RawMessage, len(evs))
	now := time.Now().UnixMilli()
	for i, e := range evs {
		out[i] = renderSyncEvent(e, b.viewer, now, shared)
	}
	return out
}

// renderSyncEvent renders e as rooms.ToClientEvent does in the sync format
// (no room_id). The per-viewer part, unsigned (with age and, for the
// sending device, transaction_id), comes last, after a prefix that is the
// same for everyone and cached for events from the ring.
func renderSyncEvent(e *storage.Event, v rooms.Viewer, now int64, shared bool) json.RawMessage {
	unsigned := bytes.TrimSpace(e.Unsigned)
	if len(unsigned) == 0 {
		unsigned = []byte("{}")
	}
	// The result is copied into the response as it is (syncjson.go), so
	// anything but the compact object the room engine stores takes the
	// general way, which re-encodes it.
	if unsigned[0] != '{' || unsigned[len(unsigned)-1] != '}' ||
		(len(unsigned) > 2 && !isCompactJSON(unsigned)) ||
		bytes.Contains(unsigned, []byte(`"age"`)) || bytes.Contains(unsigned, []byte(`"transaction_id"`)) {
		// Not the shape stored by the room engine: render the general way.
		raw, _ := json.Marshal(rooms.ToClientEvent(e, v, rooms.FormatOptions{OmitRoomID: true}))
		return raw
	}
	var prefix []byte
	if shared {
		prefix = sharedRenders.get(e)
	}
	if prefix == nil {
		ce := rooms.ToClientEvent(e, rooms.Viewer{}, rooms.FormatOptions{OmitRoomID: true})
		ce.Unsigned = nil
		raw, _ := json.Marshal(ce) // content is valid JSON: it came out of a PDU
		prefix = raw[:len(raw)-1]  // without the closing brace
		if shared {
			sharedRenders.put(e, prefix)
		}
	}
	out := make([]byte, 0, len(prefix)+len(unsigned)+48)
	out = append(out, prefix...)
	out = append(out, `,"unsigned":{`...)
	if inner := bytes.TrimSpace(unsigned[1 : len(unsigned)-1]); len(inner) > 0 {
		out = append(out, inner...)
		out = append(out, ',')
	}
	out = append(out, `"age":`...)
	out = strconv.AppendInt(out, max(now-e.OriginTS, 0), 10)
	if e.TxnID != nil && e.TxnDevice != nil && v.UserID == e.Sender && v.DeviceID == *e.TxnDevice {
		txn, _ := json.Marshal(*e.TxnID)
		out = append(out, `,"transaction_id":`...)
		out = append(out, txn...)
	}
	return append(out, '}', '}')
}

// renderCache maps ring events to the viewer-independent prefix of their
// sync JSON. It holds two generations of at most renderCacheSize entries:
// a lookup checks both, and when the newer one fills up the older is
// dropped, so recently rendered events stay without any per-entry upkeep.
type renderCache struct {
	mu        sync.Mutex
	cur, prev map[*storage.Event][]byte
}

const renderCacheSize = 256

// sharedRenders is process-wide: its keys are event values, which belong
// to one server's ring, so servers in one process (tests) never collide.
var sharedRenders renderCache

func (c *renderCache) get(e *storage.Event) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.cur[e]; ok {
		return p
	}
	return c.prev[e]
}

func (c *renderCache) put(e *storage.Event, prefix []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil || len(c.cur) >= renderCacheSize {
		c.prev, c.cur = c.cur, make(map[*storage.Event][]byte, renderCacheSize)
	}
	c.cur[e] = prefix
}

func (b *syncBuilder) joinedRoom(ctx context.Context, m storage.Membership) error {
	newlyJoined := b.since == 0 || m.Pos > b.since || b.req.fullState
	n := b.a.rooms.Notifier()
	if !newlyJoined && !n.RoomChangedSince(m.RoomID, b.since) && !n.ReceiptsChangedSince(m.RoomID, b.since) {
		return nil // nothing happened in the room: no query needed
	}
	vis := b.a.rooms.VisibilityWith(m.RoomID, b.viewer.UserID, &m)
	var err error
	lower := b.since
	if newlyJoined {
		lower = 0
	}
	tl, limited, shared, err := b.timelineWindow(ctx, m.RoomID, lower, b.to, vis)
	if err != nil {
		return err
	}
	jr := &joinedRoom{
		State:       stateList{Events: []json.RawMessage{}},
		Timeline:    timeline{Events: b.renderEvents(tl, shared), Limited: limited && (b.since > 0 || newlyJoined)},
		Ephemeral:   eventList{Events: []any{}},
		AccountData: eventList{Events: []any{}},
	}
	if newlyJoined {
		jr.Timeline.Limited = limited
	}
	timelineStart := b.to
	if len(tl) > 0 {
		timelineStart = tl[0].Pos - 1
	}
	jr.Timeline.PrevBatch = rooms.StreamToken(timelineStart)

	// State: everything up to the timeline's start when the room is new to
	// this sync; otherwise the state changes between since and that start.
	var state []*storage.Event
	if newlyJoined {
		state, err = b.a.db.StateAt(ctx, m.RoomID, timelineStart)
	} else if limited {
		state, err = b.a.db.StateChangesBetween(ctx, m.RoomID, b.since, timelineStart)
	}
	if err != nil {
		return err
	}
	state = b.filterState(state, tl)
	jr.State.Events = b.render(state)

	if err := b.ephemeral(ctx, m.RoomID, jr); err != nil {
		return err
	}
	membersChanged := newlyJoined
	for _, e := range tl {
		if e.Type == spec.MRoomMember {
			membersChanged = true
			if e.Membership != nil && e.StateKey != nil {
				if *e.Membership == spec.Join {
					b.changed[*e.StateKey] = struct{}{}
				} else if *e.Membership == spec.Leave || *e.Membership == spec.Ban {
					b.left[*e.StateKey] = struct{}{}
				}
			}
		}
	}
	if newlyJoined {
		for _, u := range b.a.rooms.Notifier().JoinedMembers(m.RoomID) {
			b.changed[u] = struct{}{}
		}
	}
	if membersChanged {
		if err := b.summary(ctx, m.RoomID, jr); err != nil {
			return err
		}
	}
	hasNews := newlyJoined || len(tl) > 0 || len(jr.State.Events) > 0 || len(jr.Ephemeral.Events) > 0 || len(jr.AccountData.Events) > 0
	if !hasNews {
		return nil
	}
	if err := b.unread(ctx, m.RoomID, jr); err != nil {
		return err
	}
	b.resp.Rooms.Join[m.RoomID] = jr
	return nil
}

// filterState drops state already in the timeline, applies the state filter
// and, with lazy_load_members, keeps only members that the timeline needs.
func (b *syncBuilder) filterState(state, tl []*storage.Event) []*storage.Event {
	inTimeline := make(map[string]struct{}, len(tl))
	senders := map[string]struct{}{b.viewer.UserID: {}}
	for _, e := range tl {
		inTimeline[e.EventID] = struct{}{}
		senders[e.Sender] = struct{}{}
	}
	sf := b.req.filter.Room.State
	out := state[:0:0]
	for _, e := range state {
		if _, dup := inTimeline[e.EventID]; dup {
			continue
		}
		if !filterMatches(sf, e.Type, e.Sender) {
			continue
		}
		if sf != nil && sf.LazyLoadMembers && e.Type == spec.MRoomMember && e.StateKey != nil {
			if _, needed := senders[*e.StateKey]; !needed {
				continue
			}
		}
		out = append(out, e)
	}
	return out
}

func (b *syncBuilder) ephemeral(ctx context.Context, roomID string, jr *joinedRoom) error {
	ef := b.req.filter.Room.Ephemeral
	if users, changed := b.a.typing.Since(roomID, b.since); changed && filterMatches(ef, "m.typing", "") {
		if users == nil {
			users = []string{}
		}
		jr.Ephemeral.Events = append(jr.Ephemeral.Events, map[string]any{
			"type": "m.typing", "content": map[string]any{"user_ids": users},
		})
	}
	if filterMatches(ef, "m.receipt", "") && (b.since == 0 || b.req.fullState || b.a.rooms.Notifier().ReceiptsChangedSince(roomID, b.since)) {
		receipts, err := b.a.db.ReceiptsSince(ctx, []string{roomID}, b.since, b.to)
		if err != nil {
			return err
		}
		content := map[string]map[string]map[string]any{}
		for _, rc := range receipts {
			if rc.ReceiptType == "m.read.private" && rc.UserID != b.viewer.UserID {
				continue
			}
			byType := content[rc.EventID]
			if byType == nil {
				byType = map[string]map[string]any{}
				content[rc.EventID] = byType
			}
			users := byType[rc.ReceiptType]
			if users == nil {
				users = map[string]any{}
				byType[rc.ReceiptType] = users
			}
			entry := map[string]any{"ts": rc.TS}
			if rc.ThreadID != "" {
				entry["thread_id"] = rc.ThreadID
			}
			users[rc.UserID] = entry
		}
		if len(content) > 0 {
			jr.Ephemeral.Events = append(jr.Ephemeral.Events, map[string]any{"type": "m.receipt", "content": content})
		}
	}
	return nil
}

func (b *syncBuilder) summary(ctx context.Context, roomID string, jr *joinedRoom) error {
	members, err := b.a.db.MembersOfRoom(ctx, roomID, spec.Join, spec.Invite)
	if err != nil {
		return err
	}
	joined, invited := 0, 0
	var heroes []string
	for _, m := range members {
		if m.Membership == spec.Join {
			joined++
		} else {
			invited++
		}
		if m.UserID != b.viewer.UserID {
			heroes = append(heroes, m.UserID)
		}
	}
	sort.Strings(heroes)
	if len(heroes) > 5 {
		heroes = heroes[:5]
	}
	jr.Summary = roomSummary{Heroes: heroes, JoinedMemberCount: &joined, InvitedMemberCount: &invited}
	return nil
}

// unread fills the room's unread counts: messages from others after the
// user's read receipt (what the default push rules notify for); highlights
// are those that mention the user.
func (b *syncBuilder) unread(ctx context.Context, roomID string, jr *joinedRoom) error {
	n, h, err := b.a.unread.counts(ctx, b.a, roomID, b.viewer.UserID, b.to)
	if err != nil {
		return err
	}
	jr.UnreadNotifications = unreadCounts{NotificationCount: n, HighlightCount: h}
	return nil
}

func (b *syncBuilder) invitedRoom(ctx context.Context, m storage.Membership) error {
	st, err := b.a.rooms.InviteState(ctx, m.RoomID, b.viewer.UserID)
	if err != nil {
		return err
	}
	ir := &invitedRoom{}
	ir.InviteState.Events = st
	if ir.InviteState.Events == nil {
		ir.InviteState.Events = []rooms.StrippedEvent{}
	}
	b.resp.Rooms.Invite[m.RoomID] = ir
	return nil
}

func (b *syncBuilder) leftRoom(ctx context.Context, m storage.Membership) error {
	vis := b.a.rooms.VisibilityWith(m.RoomID, b.viewer.UserID, &m)
	upper := min(m.Pos, b.to)
	lower := b.since
	if b.req.fullState || b.since == 0 {
		lower = 0
	}
	tl, limited, shared, err := b.timelineWindow(ctx, m.RoomID, lower, upper, vis)
	if err != nil {
		return err
	}
	start := upper
	if len(tl) > 0 {
		start = tl[0].Pos - 1
	}
	var state []*storage.Event
	if lower == 0 {
		state, err = b.a.db.StateAt(ctx, m.RoomID, start)
	} else {
		state, err = b.a.db.StateChangesBetween(ctx, m.RoomID, lower, start)
	}
	if err != nil {
		return err
	}
	b.resp.Rooms.Leave[m.RoomID] = &leftRoom{
		State:       stateList{Events: b.render(b.filterState(state, tl))},
		Timeline:    timeline{Events: b.renderEvents(tl, shared), Limited: limited, PrevBatch: rooms.StreamToken(start)},
		AccountData: eventList{Events: []any{}},
	}
	return nil
}

// globalData adds account data, presence, to-device messages, device-list
// changes and one-time-key counts.
func (b *syncBuilder) globalData(ctx context.Context, sharing map[string]struct{}) error {
	a, s := b.a, b.req.session
	pendingToDevice := b.req.since != nil && b.req.since.ToDevice < b.req.since.Pos
	if !b.directChanged && !pendingToDevice {
		// Nothing addressed to the user changed: only the key counts, which
		// every response carries, are needed (and are cached).
		b.toDevicePos = b.to
		return b.keyCounts(ctx)
	}
	data, err := a.db.AccountDataSince(ctx, s.UserID, b.since, b.to)
	if err != nil {
		return err
	}
	if b.since == 0 {
		// The default push rules are not stored until a user changes one,
		// but clients need them from the first sync.
		hasRules := false
		for _, d := range data {
			hasRules = hasRules || (d.RoomID == "" && d.Type == "m.push_rules")
		}
		if !hasRules {
			rules, err := a.pushRulesContent(ctx, s.UserID)
			if err != nil {
				return err
			}
			data = append(data, storage.AccountData{UserID: s.UserID, Type: "m.push_rules", Content: rules})
		}
	}
	for _, d := range data {
		ev := map[string]any{"type": d.Type, "content": d.Content}
		if d.RoomID == "" {
			if filterMatches(b.req.filter.AccountData, d.Type, "") {
				b.resp.AccountData.Events = append(b.resp.AccountData.Events, ev)
			}
			continue
		}
		if !b.roomAllowed(d.RoomID) || !filterMatches(b.req.filter.Room.AccountData, d.Type, "") {
			continue
		}
		if jr := b.resp.Rooms.Join[d.RoomID]; jr != nil {
			jr.AccountData.Events = append(jr.AccountData.Events, ev)
		} else if lr := b.resp.Rooms.Leave[d.RoomID]; lr != nil {
			lr.AccountData.Events = append(lr.AccountData.Events, ev)
		} else if m, err := a.db.MembershipOf(ctx, d.RoomID, s.UserID); err == nil && m.Membership == spec.Join {
			jr := &joinedRoom{
				State:       stateList{Events: []json.RawMessage{}},
				Timeline:    timeline{Events: []json.RawMessage{}, PrevBatch: rooms.StreamToken(b.to)},
				Ephemeral:   eventList{Events: []any{}},
				AccountData: eventList{Events: []any{ev}},
			}
			if err := b.unread(ctx, d.RoomID, jr); err != nil {
				return err
			}
			b.resp.Rooms.Join[d.RoomID] = jr
		}
	}

	users := make([]string, 0, len(sharing))
	for u := range sharing {
		users = append(users, u)
	}
	sort.Strings(users)
	presence, err := a.db.PresenceSince(ctx, users, b.since, b.to)
	if err != nil {
		return err
	}
	now := time.Now().UnixMilli()
	for _, p := range presence {
		if !filterMatches(b.req.filter.Presence, "m.presence", p.UserID) {
			continue
		}
		content := map[string]any{"presence": p.Presence, "currently_active": p.CurrentlyActive}
		if p.LastActiveTS > 0 {
			content["last_active_ago"] = max(now-p.LastActiveTS, 0)
		}
		if p.StatusMsg != nil {
			content["status_msg"] = *p.StatusMsg
		}
		b.resp.Presence.Events = append(b.resp.Presence.Events, map[string]any{"type": "m.presence", "sender": p.UserID, "content": content})
	}

	// To-device: messages up to the last acknowledged position are gone
	// once the client syncs past them.
	tdFrom := storage.StreamPos(0)
	if b.req.since != nil {
		tdFrom = b.req.since.ToDevice
		if err := a.db.DeleteToDeviceUpTo(ctx, s.UserID, s.DeviceID, tdFrom); err != nil {
			return err
		}
	}
	msgs, err := a.db.ToDeviceSince(ctx, s.UserID, s.DeviceID, tdFrom, b.to, maxToDevicePerSync)
	if err != nil {
		return err
	}
	b.toDevicePos = b.to
	if len(msgs) == maxToDevicePerSync {
		b.toDevicePos = msgs[len(msgs)-1].Pos
	}
	for _, m := range msgs {
		b.resp.ToDevice.Events = append(b.resp.ToDevice.Events, map[string]any{"sender": m.Sender, "type": m.Type, "content": m.Content})
	}

	if b.since > 0 {
		changed, err := a.db.DeviceListChangesSince(ctx, b.since, b.to)
		if err != nil {
			return err
		}
		for _, u := range changed {
			if _, ok := sharing[u]; ok {
				b.changed[u] = struct{}{}
			}
		}
		for u := range b.changed {
			b.resp.DeviceLists.Changed = append(b.resp.DeviceLists.Changed, u)
		}
		for u := range b.left {
			if _, still := sharing[u]; still || u == s.UserID {
				continue
			}
			b.resp.DeviceLists.Left = append(b.resp.DeviceLists.Left, u)
		}
		sort.Strings(b.resp.DeviceLists.Changed)
		sort.Strings(b.resp.DeviceLists.Left)
	}

	return b.keyCounts(ctx)
}

// keyCounts fills device_one_time_keys_count and the unused fallback key
// types, from the cache when nothing addressed to the user changed since
// they were read (uploads and claims wake the owner directly).
func (b *syncBuilder) keyCounts(ctx context.Context) error {
	s := b.req.session
	entry, err := b.a.keyCountCache.get(ctx, b.a, s.UserID, s.DeviceID)
	if err != nil {
		return err
	}
	b.resp.DeviceOneTimeKeysCount = entry.counts
	b.resp.DeviceUnusedFallbackKeyTypes = entry.fallback
	b.resp.OrgMatrixMSC2732FallbackTypes = entry.fallback
	return nil
}
