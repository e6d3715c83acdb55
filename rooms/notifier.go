package rooms

import (
	"sync"

	"github.com/agentspace/agentspace/storage"
)

// Notifier wakes long-polling /sync requests. Each user has a stream whose
// channel is closed (and replaced) whenever something for that user commits;
// Listen hands out an already-closed channel when the user's stream moved
// past the caller's position, so no wake-up is lost between reading and
// waiting. Advance is only called in commit order (from storage OnCommit
// hooks), so Latest never runs ahead of what readers can see.
type Notifier struct {
	mu sync.Mutex
	// start is where the notifier began: a user stream first seen later
	// starts there, so a token from before a restart still finds what it missed.
	start   storage.StreamPos
	pos     storage.StreamPos
	users   map[string]*userStream
	members map[string]map[string]struct{} // room -> joined users
	rooms   map[string]map[string]struct{} // user -> joined rooms
}

type userStream struct {
	pos storage.StreamPos
	ch  chan struct{}
}

// NewNotifier starts a notifier at pos.
func NewNotifier(pos storage.StreamPos) *Notifier {
	return &Notifier{
		start:   pos,
		pos:     pos,
		users:   make(map[string]*userStream),
		members: make(map[string]map[string]struct{}),
		rooms:   make(map[string]map[string]struct{}),
	}
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
		s = &userStream{pos: n.start, ch: make(chan struct{})}
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

func (n *Notifier) wakeLocked(userID string, pos storage.StreamPos) {
	s := n.stream(userID)
	if s.pos >= pos {
		return
	}
	s.pos = pos
	close(s.ch)
	s.ch = make(chan struct{})
}

// Wake is what one committed change needs to wake.
type Wake struct {
	Users []string // these users
	Rooms []string // every joined member of these rooms
	// ShareRoomsWith wakes everyone who shares a room with these users (presence, profile).
	ShareRoomsWith []string
}

// Advance moves the stream to pos and wakes whoever the change concerns.
func (n *Notifier) Advance(pos storage.StreamPos, w Wake) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if pos > n.pos {
		n.pos = pos
	}
	for _, u := range w.Users {
		n.wakeLocked(u, pos)
	}
	for _, r := range w.Rooms {
		for u := range n.members[r] {
			n.wakeLocked(u, pos)
		}
	}
	for _, u := range w.ShareRoomsWith {
		n.wakeLocked(u, pos)
		for r := range n.rooms[u] {
			for m := range n.members[r] {
				n.wakeLocked(m, pos)
			}
		}
	}
}

// SetJoined records whether user is joined to room (which decides who a
// room event wakes).
func (n *Notifier) SetJoined(roomID, userID string, joined bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if joined {
		if n.members[roomID] == nil {
			n.members[roomID] = make(map[string]struct{})
		}
		n.members[roomID][userID] = struct{}{}
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
