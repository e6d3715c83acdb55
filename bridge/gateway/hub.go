package gateway

import (
	"context"
	"sync"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// hub wakes the WebSocket connections subscribed to a room when something
// commits in it. It carries no events: each connection reads the room from
// its own cursor (memory, else the database), so a slow client only falls
// behind and catches up, and nothing is lost between a wake-up and a read.
type hub struct {
	notifier *rooms.Notifier
	once     sync.Once

	mu    sync.Mutex
	rooms map[string]map[*wsConn]struct{}
}

func newHub(n *rooms.Notifier) *hub {
	return &hub{notifier: n, rooms: make(map[string]map[*wsConn]struct{})}
}

// start runs the hub until ctx ends (once, on the first subscription).
func (h *hub) start(ctx context.Context) {
	h.once.Do(func() { go h.run(ctx) })
}

func (h *hub) run(ctx context.Context) {
	pos := h.notifier.Latest()
	for {
		ch := h.notifier.ListenAny(pos)
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
		// Read the position first: anything committed after it wakes the
		// next round, so no change falls between two rounds.
		latest := h.notifier.Latest()
		h.wakeChanged(pos)
		pos = latest
	}
}

// wakeChanged signals every connection of a room that changed after pos.
func (h *hub) wakeChanged(pos storage.StreamPos) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for room, conns := range h.rooms {
		if !h.notifier.RoomChangedSince(room, pos) {
			continue
		}
		for c := range conns {
			c.signal()
		}
	}
}

func (h *hub) add(roomID string, c *wsConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.rooms[roomID]
	if m == nil {
		m = make(map[*wsConn]struct{})
		h.rooms[roomID] = m
	}
	m[c] = struct{}{}
}

func (h *hub) remove(roomID string, c *wsConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if m := h.rooms[roomID]; m != nil {
		delete(m, c)
		if len(m) == 0 {
			delete(h.rooms, roomID)
		}
	}
}

// roomDeleted ends every subscription to a deleted room.
func (h *hub) roomDeleted(roomID string) {
	h.mu.Lock()
	conns := make([]*wsConn, 0, len(h.rooms[roomID]))
	for c := range h.rooms[roomID] {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	for _, c := range conns {
		c.endRoom(roomID, errRoomDeleted)
	}
}
