package rooms

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/agentspace/agentspace/storage"
)

// Typing keeps who is typing in which room. It is ephemeral (lost on
// restart, like every homeserver's) but each change takes a stream position
// so /sync can tell what changed since a token.
type Typing struct {
	db       *storage.DB
	notifier *Notifier

	mu    sync.Mutex
	rooms map[string]*roomTyping
}

type roomTyping struct {
	users map[string]time.Time // user -> expiry
	pos   storage.StreamPos    // last change
}

// MaxTypingTimeout caps how long one typing notification lasts.
const MaxTypingTimeout = 120 * time.Second

func newTyping(db *storage.DB, n *Notifier) *Typing {
	return &Typing{db: db, notifier: n, rooms: make(map[string]*roomTyping)}
}

// Typing returns the room engine's typing tracker.
func (s *Service) Typing() *Typing { return s.typing }

// Set marks userID typing in roomID until timeout passes, or stops it.
func (t *Typing) Set(ctx context.Context, roomID, userID string, typing bool, timeout time.Duration) error {
	if timeout <= 0 || timeout > MaxTypingTimeout {
		timeout = MaxTypingTimeout
	}
	t.mu.Lock()
	was := false
	if rt := t.rooms[roomID]; rt != nil {
		_, was = rt.users[userID]
	}
	t.mu.Unlock()
	if !typing && !was {
		return nil
	}
	expiry := time.Now().Add(timeout)
	return t.db.Write(ctx, func(tx *storage.Tx) error {
		pos, err := tx.NextPos(ctx)
		if err != nil {
			return err
		}
		tx.OnCommit(func() {
			t.mu.Lock()
			rt := t.rooms[roomID]
			if rt == nil {
				rt = &roomTyping{users: make(map[string]time.Time)}
				t.rooms[roomID] = rt
			}
			if typing {
				rt.users[userID] = expiry
			} else {
				delete(rt.users, userID)
			}
			rt.pos = pos
			t.mu.Unlock()
			t.notifier.advanceTyping(pos, TypingChange{Room: roomID, User: userID, On: typing, TimeoutMS: timeout.Milliseconds(), Pos: pos})
		})
		return nil
	})
}

// Since returns the users typing in roomID if that changed after pos.
func (t *Typing) Since(roomID string, pos storage.StreamPos) ([]string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rt := t.rooms[roomID]
	if rt == nil || rt.pos <= pos {
		return nil, false
	}
	users := make([]string, 0, len(rt.users))
	for u := range rt.users {
		users = append(users, u)
	}
	sort.Strings(users)
	return users, true
}

// Run expires typing notifications until ctx ends.
func (t *Typing) Run(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			t.mu.Lock()
			var expired [][2]string
			for roomID, rt := range t.rooms {
				for u, exp := range rt.users {
					if now.After(exp) {
						expired = append(expired, [2]string{roomID, u})
					}
				}
			}
			t.mu.Unlock()
			for _, e := range expired {
				_ = t.Set(ctx, e[0], e[1], false, 0)
			}
		}
	}
}
