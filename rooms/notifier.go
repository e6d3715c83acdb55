package rooms

import (
	"sync"

	"github.com/agentspace/agentspace/storage"
)

// Notifier wakes long-polling /sync requests and remembers, in memory, where
// each kind of change last happened so /sync can skip what has not changed.
//
// Each user has a stream whose channel is closed (and replaced) whenever
// something for that user commits; Listen hands out an already-closed channel
// when the user's stream moved past the caller's position, so no wake-up is
// lost between reading and waiting. Advance is only called in commit order
// (from storage OnCommit hooks), so Latest never runs ahead of what readers
// can see.
//
// Every "last changed at" position defaults to where the notifier started:
// after a restart nothing is known, so a token from before it is never
// wrongly treated as up to date.
type Notifier struct {
	mu      sync.Mutex
	start   storage.StreamPos
	pos     storage.StreamPos
	users   map[string]*userStream
	members map[string]map[string]storage.StreamPos // room -> joined user -> join position
	rooms   map[string]map[string]struct{}          // user -> joined rooms
	// roomPos is the last position of anything in a room (event, receipt, typing).
	roomPos map[string]storage.StreamPos
	// receiptPos is the last read receipt (public or private) in a room.
	receiptPos map[string]storage.StreamPos
	// any is closed (and replaced) whenever the stream moves at all: it wakes
	// consumers of the whole stream, such as appservice delivery.
	any chan struct{}

	// Several instances (cluster.go): pos is then a watermark, the highest
	// position up to which every change, local or remote, has been applied;
	// applied holds the ranges applied above it and pending the user wakes
	// waiting for it to pass them. rec collects the local changes of the
	// commit in progress, for the change feed.
	strict  bool
	applied []posRange
	pending []pendingWake
	rec     *Change
	// memberPos and typingPos: the last position each (room, user)
	// membership and typing state changed at, so a late remote change
	// never overrides a newer one.
	memberPos, typingPos map[[2]string]storage.StreamPos
}

type userStream struct {
	pos storage.StreamPos // last change of any kind for the user
	ch  chan struct{}
	// direct is the last change addressed to the user rather than to a room
	// they are in: account data, to-device, presence, device lists, keys.
	direct storage.StreamPos
	// membership is the last change of the user's own membership anywhere.
	membership storage.StreamPos
}

// NewNotifier starts a notifier at pos.
func NewNotifier(pos storage.StreamPos) *Notifier {
	return &Notifier{
		start:   pos,
		pos:     pos,
		users:   make(map[string]*userStream),
		members: make(map[string]map[string]storage.StreamPos),
		rooms:   make(map[string]map[string]struct{}),
		roomPos: make(map[string]storage.StreamPos),

		receiptPos: make(map[string]storage.StreamPos),
		any:        make(chan struct{}),
	}
}

// ListenAny returns a channel that is closed once anything commits after
// position since.
func (n *Notifier) ListenAny(since storage.StreamPos) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.pos > since {
		closed := make(chan struct{})
		close(closed)
		return closed
	}
	return n.any
}

// Committed is the newest position known to be committed, by this
// instance or (several instances) by another one; it is at least Latest.
// Reads that go to the database rather than to in-memory state (/messages
// without a from token) may go up to it, so an event is readable on the
// instance that stored it the moment its send returns, even while an
// earlier change of another instance is still on its way here.
func (n *Notifier) Committed() storage.StreamPos {
	n.mu.Lock()
	defer n.mu.Unlock()
	top := n.pos
	for _, r := range n.applied {
		top = max(top, r.last)
	}
	return top
}

// Latest is the newest committed stream position.
func (n *Notifier) Latest() storage.StreamPos {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pos
}

func (n *Notifier) stream(userID string) *userStream {
	s := n.users[userID]
	if s == nil {
		s = &userStream{pos: n.start, direct: n.start, membership: n.start, ch: make(chan struct{})}
		n.users[userID] = s
	}
	return s
}

// Listen returns a channel that is closed once something for userID commits
// after position since.
func (n *Notifier) Listen(userID string, since storage.StreamPos) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.stream(userID)
	if s.pos > since {
		closed := make(chan struct{})
		close(closed)
		return closed
	}
	return s.ch
}

func (n *Notifier) wakeLocked(userID string, pos storage.StreamPos, direct bool) {
	s := n.stream(userID)
	if direct && s.direct < pos {
		s.direct = pos
	}
	if n.strict && pos > n.pos {
		n.pending = append(n.pending, pendingWake{userID, pos}) // woken when the watermark passes pos
		return
	}
	if s.pos >= pos {
		return
	}
	s.pos = pos
	close(s.ch)
	s.ch = make(chan struct{})
}

// Wake is what one committed change needs to wake.
type Wake struct {
	Users []string // these users (a change addressed to them)
	Rooms []string // every joined member of these rooms
	// ShareRoomsWith wakes these users and everyone who shares a room with
	// them (presence, device lists).
	ShareRoomsWith []string
	// ReceiptRooms are rooms where a read receipt changed (it wakes nobody
	// by itself: pair it with Rooms, or Users for a private receipt).
	ReceiptRooms []string
}

// Advance moves the stream to pos and wakes whoever the change concerns.
func (n *Notifier) Advance(pos storage.StreamPos, w Wake) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.rec != nil {
		n.rec.recordWake(w)
	}
	if pos > n.pos && !n.strict { // strict: markApplied moves the watermark
		n.pos = pos
		close(n.any)
		n.any = make(chan struct{})
	}
	n.advanceLocked(pos, w)
}

func (n *Notifier) advanceLocked(pos storage.StreamPos, w Wake) {
	for _, u := range w.Users {
		n.wakeLocked(u, pos, true)
	}
	for _, r := range w.Rooms {
		if n.roomPos[r] < pos {
			n.roomPos[r] = pos
		}
		for u := range n.members[r] {
			n.wakeLocked(u, pos, false)
		}
	}
	for _, r := range w.ReceiptRooms {
		if n.receiptPos[r] < pos {
			n.receiptPos[r] = pos
		}
	}
	for _, u := range w.ShareRoomsWith {
		n.wakeLocked(u, pos, true)
		for r := range n.rooms[u] {
			for m := range n.members[r] {
				n.wakeLocked(m, pos, true)
			}
		}
	}
}

// SetMembership records a user's new membership of a room at pos: whether
// they are joined decides who a room event wakes.
func (n *Notifier) SetMembership(roomID, userID string, joined bool, pos storage.StreamPos) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.rec != nil {
		n.rec.Members = append(n.rec.Members, MemberChange{Room: roomID, User: userID, Joined: joined, Pos: pos})
	}
	n.setMembershipLocked(roomID, userID, joined, pos)
}

func (n *Notifier) setMembershipLocked(roomID, userID string, joined bool, pos storage.StreamPos) {
	if n.memberPos != nil {
		if key := [2]string{roomID, userID}; n.memberPos[key] < pos {
			n.memberPos[key] = pos
		}
	}
	s := n.stream(userID)
	if s.membership < pos {
		s.membership = pos
	}
	n.setJoinedLocked(roomID, userID, joined, pos)
}

// SetJoined seeds a join known at start-up.
func (n *Notifier) SetJoined(roomID, userID string, joined bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.rec != nil {
		n.rec.Members = append(n.rec.Members, MemberChange{Room: roomID, User: userID, Joined: joined})
	}
	n.setJoinedLocked(roomID, userID, joined, n.start)
}

func (n *Notifier) setJoinedLocked(roomID, userID string, joined bool, pos storage.StreamPos) {
	if joined {
		if n.members[roomID] == nil {
			n.members[roomID] = make(map[string]storage.StreamPos)
		}
		if _, already := n.members[roomID][userID]; !already {
			n.members[roomID][userID] = pos
		}
		if n.rooms[userID] == nil {
			n.rooms[userID] = make(map[string]struct{})
		}
		n.rooms[userID][roomID] = struct{}{}
		return
	}
	delete(n.members[roomID], userID)
	delete(n.rooms[userID], roomID)
}

// JoinedRooms lists the rooms a user is joined to.
func (n *Notifier) JoinedRooms(userID string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]string, 0, len(n.rooms[userID]))
	for r := range n.rooms[userID] {
		out = append(out, r)
	}
	return out
}

// JoinedMembers lists a room's joined users.
func (n *Notifier) JoinedMembers(roomID string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]string, 0, len(n.members[roomID]))
	for u := range n.members[roomID] {
		out = append(out, u)
	}
	return out
}

// UserChanges says what changed for one user after a position, as far as
// the notifier knows (it errs towards "changed").
type UserChanges struct {
	// Membership: the user's own membership changed somewhere.
	Membership bool
	// Direct: something addressed to the user (account data, to-device,
	// presence, device lists, keys) changed.
	Direct bool
}

// ChangesSince reports what changed for a user after since.
func (n *Notifier) ChangesSince(userID string, since storage.StreamPos) UserChanges {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.stream(userID)
	return UserChanges{Membership: s.membership > since, Direct: s.direct > since}
}

// RoomChangedSince reports whether anything happened in a room after since.
func (n *Notifier) RoomChangedSince(roomID string, since storage.StreamPos) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	pos, ok := n.roomPos[roomID]
	if !ok {
		pos = n.start
	}
	return pos > since
}

// ReceiptsChangedSince reports whether a read receipt changed in a room after since.
func (n *Notifier) ReceiptsChangedSince(roomID string, since storage.StreamPos) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	pos, ok := n.receiptPos[roomID]
	if !ok {
		pos = n.start
	}
	return pos > since
}

// JoinPositions returns the user's joined rooms with the position each join
// became known (the start position for joins older than this process).
func (n *Notifier) JoinPositions(userID string) map[string]storage.StreamPos {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]storage.StreamPos, len(n.rooms[userID]))
	for r := range n.rooms[userID] {
		out[r] = n.members[r][userID]
	}
	return out
}
