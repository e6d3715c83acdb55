package clientapi

import (
	"context"
	"sync"

	"github.com/agentspace/agentspace/storage"
)

// keyCountCache remembers each device's one-time-key counts and unused
// fallback key types, which every /sync response carries, so an idle
// long-poll does not query them each time. An entry is valid while nothing
// addressed to its user has changed since it was read: key uploads and
// claims wake the owner directly.
type keyCountCache struct {
	mu      sync.Mutex
	entries map[[2]string]keyCounts
}

type keyCounts struct {
	counts   map[string]int
	fallback []string
	at       storage.StreamPos
}

// maxKeyCountEntries bounds the cache; it is simply cleared when full.
const maxKeyCountEntries = 100000

func newKeyCountCache() *keyCountCache {
	return &keyCountCache{entries: make(map[[2]string]keyCounts)}
}

func (c *keyCountCache) get(ctx context.Context, a *API, userID, deviceID string) (keyCounts, error) {
	n := a.rooms.Notifier()
	key := [2]string{userID, deviceID}
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if ok && !n.ChangesSince(userID, e.at).Direct {
		return e, nil
	}
	at := n.Latest() // read before the queries: a change after this invalidates
	counts, err := a.db.OneTimeKeyCounts(ctx, userID, deviceID)
	if err != nil {
		return keyCounts{}, err
	}
	if counts == nil {
		counts = map[string]int{}
	}
	if _, ok := counts["signed_curve25519"]; !ok {
		counts["signed_curve25519"] = 0
	}
	fallback, err := a.db.UnusedFallbackKeyTypes(ctx, userID, deviceID)
	if err != nil {
		return keyCounts{}, err
	}
	if fallback == nil {
		fallback = []string{}
	}
	e = keyCounts{counts: counts, fallback: fallback, at: at}
	c.mu.Lock()
	if len(c.entries) >= maxKeyCountEntries {
		c.entries = make(map[[2]string]keyCounts)
	}
	c.entries[key] = e
	c.mu.Unlock()
	return e, nil
}
