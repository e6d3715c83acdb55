package clientapi

import (
	"bytes"
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
	// receiptCheckedAt: no receipt in the room changed after this position
	// when receiptEventID was read, so the receipt need not be re-read.
	receiptCheckedAt storage.StreamPos
	countedTo        storage.StreamPos // events up to here are counted
	notif            int
	highlight        int
}

const maxUnreadEntries = 200000

func newUnreadCache() *unreadCache {
	return &unreadCache{entries: make(map[[2]string]unreadEntry)}
}

// notifyingTypes are the event types the default push rules notify for.
var notifyingTypes = map[string]bool{
	"m.room.message": true, "m.room.encrypted": true, "m.sticker": true, "m.call.invite": true,
	"m.poll.start": true, "org.matrix.msc3381.poll.start": true,
}

// counts returns the unread notification and highlight counts of a room
// for a user, up to position to: messages from others after the user's
// read receipt; highlights are those mentioning the user.
func (c *unreadCache) counts(ctx context.Context, a *API, roomID, userID string, to storage.StreamPos) (int, int, error) {
	key := [2]string{userID, roomID}
	c.mu.Lock()
	e, cached := c.entries[key]
	c.mu.Unlock()
	n := a.rooms.Notifier()

	if !cached || n.ReceiptsChangedSince(roomID, e.receiptCheckedAt) {
		checkedAt := n.Latest() // before the read: a later receipt invalidates
		receiptID := ""
		if rc, err := a.db.LatestReceipt(ctx, roomID, userID); err == nil {
			receiptID = rc.EventID
		} else if !errors.Is(err, storage.ErrNotFound) {
			return 0, 0, err
		}
		if !cached || e.receiptEventID != receiptID {
			e = unreadEntry{receiptEventID: receiptID}
			if receiptID != "" {
				if ev, err := a.db.EventByID(ctx, receiptID); err == nil {
					e.receiptPos = ev.Pos
				} else if !errors.Is(err, storage.ErrNotFound) {
					return 0, 0, err
				}
			}
			e.countedTo = e.receiptPos
		}
		e.receiptCheckedAt = checkedAt
	}
	if to > e.countedTo {
		localpart := strings.ToLower(strings.TrimPrefix(strings.SplitN(userID, ":", 2)[0], "@"))
		if recent, ok := a.rooms.RecentEvents(roomID, e.countedTo, to); ok {
			quoted := []byte(`"` + userID + `"`)
			for _, ev := range recent {
				if !notifyingTypes[ev.Type] || ev.Sender == userID {
					continue
				}
				e.notif++
				// Outside the content a notifying event names only its own
				// sender, so the content is enough to look in when known.
				mentions := ev.Content
				if mentions == nil {
					mentions = ev.PDUJSON
				}
				if (ev.Body != nil && strings.Contains(strings.ToLower(*ev.Body), localpart)) || bytes.Contains(mentions, quoted) {
					e.highlight++
				}
			}
		} else {
			n, h, err := a.db.CountUnread(ctx, roomID, e.countedTo, to, userID,
				storage.LikeContains(localpart), storage.LikeContains(`"`+userID+`"`))
			if err != nil {
				return 0, 0, err
			}
			e.notif += n
			e.highlight += h
		}
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
