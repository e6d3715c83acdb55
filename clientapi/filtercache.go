package clientapi

import (
	"sync"

	"maunium.net/go/mautrix"
)

// syncFilterCache keeps parsed /sync filters: clients send the same filter
// (inline JSON or a stored filter id, and stored filters never change) with
// every long-poll, and decoding it was a tenth of the allocations of a busy
// server. Cached filters are shared between requests and must be read only.
type syncFilterCache struct {
	mu sync.Mutex
	m  map[string]*mautrix.Filter
	// def is the filter of a /sync without one.
	def mautrix.Filter
}

const maxCachedSyncFilters = 4096

func newSyncFilterCache() *syncFilterCache {
	return &syncFilterCache{m: make(map[string]*mautrix.Filter), def: mautrix.DefaultFilter()}
}

// get returns the parsed filter of userID's "filter" parameter, if cached.
func (c *syncFilterCache) get(userID, param string) (*mautrix.Filter, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.m[userID+"\x00"+param]
	return f, ok
}

func (c *syncFilterCache) put(userID, param string, f *mautrix.Filter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxCachedSyncFilters {
		c.m = make(map[string]*mautrix.Filter) // crude but bounded; refills at once
	}
	c.m[userID+"\x00"+param] = f
}
