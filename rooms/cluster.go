package rooms

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/agentspace/agentspace/storage"
)

// Several AgentSpace processes sharing one PostgreSQL database form one
// homeserver. Each keeps its in-memory caches (room state, the recent-event
// rings, the notifier's membership and "changed since" markers, typing,
// the session cache) up to date through a change feed: after every commit
// an instance publishes a Change on storage.Feed (PostgreSQL LISTEN/NOTIFY),
// and the others apply it.
//
// Correctness does not depend on the feed:
//   - Room writes take a per-room advisory lock and check, inside the
//     transaction, that the room's newest event is the one the cache builds
//     on; otherwise the batch is rebuilt on a fresh load (no forked rooms).
//   - The notifier's position becomes a watermark: the highest position up
//     to which every change has been applied here. /sync never reads past
//     it, so it never skips a remote event it has not been told about.
//   - A fallback poll compares the database's stream position with the
//     watermark; a gap that lasts (a lost notification, a publisher that
//     died between commit and notify, a listener reconnect) triggers a
//     resync: every cached room is dropped, memberships are reloaded,
//     sessions are looked up again and every listener is woken. A lost
//     notification costs latency, never data.

// Change is one commit as the change feed carries it.
type Change struct {
	// Origin is the publishing instance (its own changes are skipped).
	Origin string `json:"o,omitempty"`
	// First and Last are the positions the commit allocated (0: none).
	First storage.StreamPos `json:"f,omitempty"`
	Last  storage.StreamPos `json:"l,omitempty"`
	// The Wake, flattened.
	Users    []string `json:"u,omitempty"`
	Rooms    []string `json:"r,omitempty"`
	Share    []string `json:"s,omitempty"`
	Receipts []string `json:"rr,omitempty"`
	// Events are rooms whose events or state changed: their cached state
	// and recent-event ring are dropped.
	Events  []string       `json:"e,omitempty"`
	Members []MemberChange `json:"m,omitempty"`
	Typing  []TypingChange `json:"t,omitempty"`
	// Auth: a token, device or user may have been revoked or changed.
	Auth bool `json:"a,omitempty"`
	// Resync: the change did not fit a notification; resynchronise.
	Resync bool `json:"x,omitempty"`
}

// MemberChange is one user's new membership of a room.
type MemberChange struct {
	Room   string            `json:"r"`
	User   string            `json:"u"`
	Joined bool              `json:"j,omitempty"`
	Pos    storage.StreamPos `json:"p,omitempty"`
}

// TypingChange is one user starting or stopping typing in a room.
type TypingChange struct {
	Room      string            `json:"r"`
	User      string            `json:"u"`
	On        bool              `json:"on,omitempty"`
	TimeoutMS int64             `json:"ms,omitempty"`
	Pos       storage.StreamPos `json:"p"`
}

func (c *Change) recordWake(w Wake) {
	c.Users = append(c.Users, w.Users...)
	c.Rooms = append(c.Rooms, w.Rooms...)
	c.Share = append(c.Share, w.ShareRoomsWith...)
	c.Receipts = append(c.Receipts, w.ReceiptRooms...)
	for _, r := range w.Rooms {
		if !slices.Contains(w.ReceiptRooms, r) { // a receipt leaves the room's events alone
			c.Events = append(c.Events, r)
		}
	}
}

func (c *Change) empty() bool {
	return c.Last == 0 && !c.Auth && len(c.Members) == 0 && len(c.Typing) == 0 && len(c.Events) == 0 &&
		len(c.Users) == 0 && len(c.Rooms) == 0 && len(c.Share) == 0
}

func dedupe(s []string) []string {
	if len(s) < 2 {
		return s
	}
	sort.Strings(s)
	return slices.Compact(s)
}

// posRange is a closed range of stream positions.
type posRange struct{ first, last storage.StreamPos }

// pendingWake is a user to wake once the watermark reaches pos.
type pendingWake struct {
	user string
	pos  storage.StreamPos
}

// Cluster keeps this instance in step with the others sharing the database.
type Cluster struct {
	s    *Service
	feed *storage.Feed
	id   string
	log  *slog.Logger

	// PollEvery and GapTimeout tune the fallback poll: a gap between the
	// database's position and the watermark older than GapTimeout is
	// resynchronised.
	PollEvery, GapTimeout time.Duration
}

// Default fallback poll settings.
const (
	DefaultClusterPoll = 500 * time.Millisecond
	DefaultClusterGap  = time.Second
)

// EnableCluster switches the engine to multi-instance mode on feed: the
// notifier position becomes a watermark, local commits are published and
// room writes check the room's head. Call it once, before serving; Run
// applies the other instances' changes.
func (s *Service) EnableCluster(feed *storage.Feed, log *slog.Logger) *Cluster {
	var b [8]byte
	_, _ = rand.Read(b[:])
	c := &Cluster{s: s, feed: feed, id: hex.EncodeToString(b[:]), log: log,
		PollEvery: DefaultClusterPoll, GapTimeout: DefaultClusterGap}
	n := s.notifier
	n.mu.Lock()
	n.strict = true
	n.rec = &Change{}
	n.memberPos = make(map[[2]string]storage.StreamPos)
	n.typingPos = make(map[[2]string]storage.StreamPos)
	n.mu.Unlock()
	s.db.SetCommitObserver(c.observe)
	return c
}

// ID is this instance's id on the feed.
func (c *Cluster) ID() string { return c.id }

// clustered reports whether several instances may write the database.
func (n *Notifier) clustered() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.strict
}

// observe runs after every local commit, under the storage write lock: it
// marks the commit's positions applied and publishes what the commit's
// hooks recorded.
func (c *Cluster) observe(cm storage.Commit) {
	n := c.s.notifier
	n.mu.Lock()
	ch := n.rec
	n.rec = &Change{}
	if cm.Last > 0 {
		n.markAppliedLocked(cm.First, cm.Last)
	}
	n.mu.Unlock()
	ch.Origin, ch.First, ch.Last, ch.Auth = c.id, cm.First, cm.Last, cm.AuthChanged
	if ch.empty() {
		return
	}
	ch.Users, ch.Rooms, ch.Share = dedupe(ch.Users), dedupe(ch.Rooms), dedupe(ch.Share)
	ch.Receipts, ch.Events = dedupe(ch.Receipts), dedupe(ch.Events)
	b, err := json.Marshal(ch)
	if err == nil {
		err = c.feed.Publish(b)
	}
	if err != nil { // too large: the others resynchronise instead
		b, _ = json.Marshal(&Change{Origin: c.id, First: cm.First, Last: cm.Last, Auth: cm.AuthChanged, Resync: true})
		if err := c.feed.Publish(b); err != nil {
			c.log.Warn("change feed: cannot publish", "err", err)
		}
	}
}

// markAppliedLocked records that every change in [first, last] has been
// applied, moves the watermark over every contiguous applied range and
// wakes the listeners it passed.
func (n *Notifier) markAppliedLocked(first, last storage.StreamPos) {
	if last <= n.pos {
		return
	}
	if first > n.pos+1 {
		n.applied = append(n.applied, posRange{first, last})
		return
	}
	old := n.pos
	n.pos = last
	for moved := true; moved; {
		moved = false
		for i := 0; i < len(n.applied); i++ {
			if r := n.applied[i]; r.first <= n.pos+1 {
				n.pos = max(n.pos, r.last)
				n.applied = slices.Delete(n.applied, i, i+1)
				i--
				moved = true
			}
		}
	}
	if n.pos == old {
		return
	}
	close(n.any)
	n.any = make(chan struct{})
	keep := n.pending[:0]
	var due []pendingWake
	for _, p := range n.pending {
		if p.pos <= n.pos {
			due = append(due, p)
		} else {
			keep = append(keep, p)
		}
	}
	n.pending = keep
	for _, p := range due {
		n.wakeLocked(p.user, p.pos, false)
	}
}

// advanceTyping is Advance for a typing change: it wakes the room without
// marking its events changed, and records the change for the feed.
func (n *Notifier) advanceTyping(pos storage.StreamPos, tc TypingChange) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.rec != nil {
		n.rec.Typing = append(n.rec.Typing, tc)
		n.rec.Rooms = append(n.rec.Rooms, tc.Room)
		n.typingPos[[2]string{tc.Room, tc.User}] = pos
	}
	if pos > n.pos && !n.strict {
		n.pos = pos
		close(n.any)
		n.any = make(chan struct{})
	}
	n.advanceLocked(pos, Wake{Rooms: []string{tc.Room}})
}

// Run applies the other instances' changes and runs the fallback poll
// until ctx ends.
func (c *Cluster) Run(ctx context.Context) {
	// Anything committed between the engine's start and the listener's is
	// only in the database.
	c.resync(ctx)
	tick := time.NewTicker(c.PollEvery)
	defer tick.Stop()
	var lagTarget storage.StreamPos
	var lagSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-c.feed.Messages():
			var ch Change
			if err := json.Unmarshal(msg, &ch); err != nil {
				c.log.Warn("change feed: bad message", "err", err)
				continue
			}
			if ch.Origin == c.id {
				continue
			}
			c.apply(ctx, &ch)
		case <-c.feed.Reconnected():
			c.log.Info("change feed: listener reconnected; resynchronising")
			c.resync(ctx)
		case now := <-tick.C:
			dbPos, err := c.s.db.CurrentPos(ctx)
			if err != nil {
				continue
			}
			w := c.s.notifier.Latest()
			switch {
			case dbPos <= w || (lagTarget > 0 && w >= lagTarget):
				lagTarget = 0
				if dbPos > w {
					lagTarget, lagSince = dbPos, now
				}
			case lagTarget == 0:
				lagTarget, lagSince = dbPos, now
			case now.Sub(lagSince) >= c.GapTimeout:
				c.log.Warn("change feed: missed changes; resynchronising", "watermark", int64(w), "database", int64(lagTarget))
				c.resync(ctx)
				lagTarget = 0
			}
		}
	}
}

// apply applies another instance's change: drop the cached rooms it
// touched, update memberships, typing and sessions, wake the listeners,
// then mark its positions applied.
func (c *Cluster) apply(ctx context.Context, ch *Change) {
	if ch.Resync {
		c.resync(ctx)
		return
	}
	for _, roomID := range ch.Events {
		c.s.markBehind(roomID, ch.Last)
	}
	if ch.Auth {
		c.s.db.BumpAuthGeneration()
	}
	for _, tc := range ch.Typing {
		c.s.typing.applyRemote(tc)
	}
	n := c.s.notifier
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range ch.Members {
		key := [2]string{m.Room, m.User}
		if m.Pos > 0 && n.memberPos[key] > m.Pos {
			continue // a newer change of this membership was applied already
		}
		if m.Pos == 0 {
			n.setJoinedLocked(m.Room, m.User, m.Joined, n.pos)
			continue
		}
		n.setMembershipLocked(m.Room, m.User, m.Joined, m.Pos)
	}
	if ch.Last > 0 {
		n.advanceLocked(ch.Last, Wake{Users: ch.Users, Rooms: ch.Rooms, ShareRoomsWith: ch.Share, ReceiptRooms: ch.Receipts})
		n.markAppliedLocked(ch.First, ch.Last)
	}
}

// resync catches up with the database after changes may have been missed:
// memberships are reloaded (under the write lock, so no local commit
// interleaves), then every cached room is dropped, then everything up to
// the position read first is marked applied and every listener is woken.
func (c *Cluster) resync(ctx context.Context) {
	var upTo storage.StreamPos
	var joins []storage.Membership
	err := c.s.db.Write(ctx, func(tx *storage.Tx) error {
		var err error
		if upTo, err = c.s.db.CurrentPos(ctx); err != nil {
			return err
		}
		if joins, err = c.s.db.AllJoinedMemberships(ctx); err != nil {
			return err
		}
		tx.OnCommit(func() { c.s.notifier.resetMembers(upTo, joins) })
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("change feed: resync failed; will retry", "err", err)
		}
		return // the poll tries again
	}
	c.s.invalidateAllRooms()
	c.s.db.BumpAuthGeneration()
	c.s.notifier.resyncTo(upTo)
}

// resetMembers replaces the joined memberships with joins, read at upTo.
// A membership changed here after upTo (memberPos) is newer and kept.
func (n *Notifier) resetMembers(upTo storage.StreamPos, joins []storage.Membership) {
	n.mu.Lock()
	defer n.mu.Unlock()
	want := make(map[[2]string]bool, len(joins))
	for _, m := range joins {
		want[[2]string{m.RoomID, m.UserID}] = true
	}
	for roomID, members := range n.members {
		for u := range members {
			key := [2]string{roomID, u}
			if !want[key] && n.memberPos[key] <= upTo {
				n.setMembershipLocked(roomID, u, false, upTo)
			}
		}
	}
	for key := range want {
		if _, ok := n.members[key[0]][key[1]]; !ok && n.memberPos[key] <= upTo {
			n.setMembershipLocked(key[0], key[1], true, upTo)
		}
	}
}

// resyncTo marks everything up to upTo applied and, since what changed is
// unknown, reports everything as changed at upTo and wakes every listener.
func (n *Notifier) resyncTo(upTo storage.StreamPos) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.markAppliedLocked(0, upTo)
	if n.start < upTo {
		n.start = upTo // unknown rooms and users count as changed before upTo
	}
	for r, p := range n.roomPos {
		n.roomPos[r] = max(p, upTo)
	}
	for r, p := range n.receiptPos {
		n.receiptPos[r] = max(p, upTo)
	}
	for u, s := range n.users {
		s.membership = max(s.membership, upTo)
		n.wakeLocked(u, upTo, true)
	}
}

// movedSinceCached reports, with several instances, whether another
// instance stored events of the room after the cached head. A commit
// checks this under the room's lock anyway; a refusal, which commits
// nothing, checks it here so that it never rests on state another instance
// has already changed.
func (s *Service) movedSinceCached(ctx context.Context, r *room) bool {
	if !s.notifier.clustered() {
		return false
	}
	if r.behind {
		return true
	}
	latest, err := s.db.LatestRoomEvent(ctx, r.id)
	return err == nil && latest.EventID != r.latestID
}

// markBehind records that another instance stored events of a room, up
// to position upTo. The room's ring of recent events no longer holds all
// of them, so it is emptied; its cached state stays and is brought forward
// (catchUp) before its next use, unless it already reaches upTo (a commit
// here that found the room moved caught up with the change before the
// feed delivered it).
func (s *Service) markBehind(roomID string, upTo storage.StreamPos) {
	s.mu.Lock()
	r := s.rooms[roomID]
	s.mu.Unlock()
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.loaded && !r.behind && r.headPos >= upTo {
		return
	}
	r.recent.reset(math.MaxInt64) // RecentEvents answers "not in memory" until refreshed
	if r.loaded {
		r.behind = true
	}
}

// refreshRoom makes a room's cache current: a full load when there is
// none, otherwise a catch-up with what other instances stored after its head.
func (s *Service) refreshRoom(ctx context.Context, r *room) error {
	if !r.loaded {
		return s.loadRoom(ctx, r)
	}
	if err := s.catchUp(ctx, r); err != nil {
		r.loaded = false // nothing cached is trusted now; the next use loads afresh
		return err
	}
	return nil
}

// maxCatchUpEvents bounds a catch-up; a room further behind is reloaded.
const maxCatchUpEvents = 256

// catchUp applies the events stored after the cached head to the cached
// state, instead of reloading the room's whole state (every state event
// parsed again) after each remote commit: a busy room shared by two
// instances would otherwise reload on every batch. A redaction (which
// rewrites an older event), history that does not continue from the
// cached head, or a long gap take the full reload.
func (s *Service) catchUp(ctx context.Context, r *room) error {
	evs, err := s.db.RoomEvents(ctx, r.id, r.headPos, 0, false, maxCatchUpEvents, nil)
	if err != nil {
		return fmt.Errorf("catching up room %s: %w", r.id, err)
	}
	if len(evs) == maxCatchUpEvents {
		return s.loadRoom(ctx, r)
	}
	latestID, depth, headPos := r.latestID, r.depth, r.headPos
	changed := map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}
	for _, e := range evs {
		if e.Type == spec.MRoomRedaction || e.RedactedBy != nil || !continues(e.PDUJSON, latestID) {
			return s.loadRoom(ctx, r)
		}
		if e.StateKey != nil {
			pdu, err := r.version.NewEventFromTrustedJSONWithEventID(e.EventID, e.PDUJSON, false)
			if err != nil {
				return s.loadRoom(ctx, r)
			}
			changed[gomatrixserverlib.StateKeyTuple{EventType: e.Type, StateKey: *e.StateKey}] = pdu
		}
		latestID, depth, headPos = e.EventID, e.Depth, e.Pos
	}
	maps.Copy(r.state, changed)
	r.latestID, r.depth, r.headPos, r.behind = latestID, depth, headPos, false
	r.recent.reset(headPos)
	return nil
}

// continues reports whether an event's prev_events name prevID: rooms here
// have one linear history, so every event follows the one before it.
func continues(pduJSON []byte, prevID string) bool {
	for _, p := range gjson.GetBytes(pduJSON, "prev_events").Array() {
		if p.Str == prevID {
			return true
		}
	}
	return false
}

func (s *Service) invalidateAllRooms() {
	s.mu.Lock()
	all := make([]*room, 0, len(s.rooms))
	for _, r := range s.rooms {
		all = append(all, r)
	}
	s.mu.Unlock()
	for _, r := range all {
		s.invalidate(r)
	}
}

func (s *Service) invalidate(r *room) {
	r.mu.Lock() // loadRoom, under r.mu, sets up the ring
	// RecentEvents now answers "not in memory" until the room reloads.
	r.recent.reset(math.MaxInt64)
	r.loaded = false
	r.mu.Unlock()
}

// errRoomMoved aborts a commit whose room gained an event from another
// instance since the cache was loaded: the batch is rebuilt on a reload.
var errRoomMoved = errors.New("room changed on another instance")

// maxRoomMovedRetries bounds the rebuilds of one batch.
const maxRoomMovedRetries = 5

// checkRoomHead, inside a commit's transaction, locks the room across
// instances and checks that its newest stored event is the one the cached
// state builds on.
func (s *Service) checkRoomHead(ctx context.Context, tx *storage.Tx, r *room) error {
	if err := tx.LockRoom(ctx, r.id); err != nil {
		return err
	}
	head, err := tx.LatestRoomEventID(ctx, r.id)
	if err != nil {
		return err
	}
	if head != r.latestID {
		return errRoomMoved
	}
	return nil
}

// applyRemote applies another instance's typing change.
func (t *Typing) applyRemote(tc TypingChange) {
	n := t.notifier
	key := [2]string{tc.Room, tc.User}
	n.mu.Lock()
	if n.typingPos[key] > tc.Pos {
		n.mu.Unlock()
		return // a newer change was applied already
	}
	n.typingPos[key] = tc.Pos
	n.mu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	rt := t.rooms[tc.Room]
	if rt == nil {
		rt = &roomTyping{users: make(map[string]time.Time)}
		t.rooms[tc.Room] = rt
	}
	if tc.On {
		rt.users[tc.User] = time.Now().Add(time.Duration(tc.TimeoutMS) * time.Millisecond)
	} else {
		delete(rt.users, tc.User)
	}
	rt.pos = max(rt.pos, tc.Pos)
}
