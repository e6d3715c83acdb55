package clientapi

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/agentspace/agentspace/storage"
)

// unreadCache keeps each (user, room)'s notification counts so a sync only
// counts the events that arrived since the previous one, instead of every
// event since the user's read receipt.
type unreadCache struct {
	mu      sync.Mutex
	entries map[[2]string]unreadEntry
}

type unreadEntry struct {
	receiptEventID string            // the read receipt the counts start from
	receiptPos     storage.StreamPos // its position
	countedTo      storage.StreamPos // events up to here are counted
	notif          int
	highlight      int
}

const maxUnreadEntries = 200000

func newUnreadCache() *unreadCache {
	return &unreadCache{entries: make(map[[2]string]unreadEntry)}
}

// counts returns the unread notification and highlight counts of a room
// for a user, up to position to.
func (c *unreadCache) counts(ctx context.Context, db *storage.DB, roomID, userID string, to storage.StreamPos) (int, int, error) {
	key := [2]string{userID, roomID}
	c.mu.Lock()
	e, cached := c.entries[key]
	c.mu.Unlock()

	receiptID := ""
	if rc, err := db.LatestReceipt(ctx, roomID, userID); err == nil {
		receiptID = rc.EventID
	} else if !errors.Is(err, storage.ErrNotFound) {
		return 0, 0, err
	}
	if !cached || e.receiptEventID != receiptID {
		e = unreadEntry{receiptEventID: receiptID}
		if receiptID != "" {
			if ev, err := db.EventByID(ctx, receiptID); err == nil {
				e.receiptPos = ev.Pos
			} else if !errors.Is(err, storage.ErrNotFound) {
				return 0, 0, err
			}
		}
		e.countedTo = e.receiptPos
	}
	if to > e.countedTo {
		localpart := strings.TrimPrefix(strings.SplitN(userID, ":", 2)[0], "@")
		n, h, err := db.CountUnread(ctx, roomID, e.countedTo, to, userID,
			storage.LikeContains(strings.ToLower(localpart)), storage.LikeContains(`"`+userID+`"`))
		if err != nil {
			return 0, 0, err
		}
		e.notif += n
		e.highlight += h
		e.countedTo = to
	}
	c.mu.Lock()
	if len(c.entries) >= maxUnreadEntries {
		c.entries = make(map[[2]string]unreadEntry)
	}
	c.entries[key] = e
	c.mu.Unlock()
	return e.notif, e.highlight, nil
}
