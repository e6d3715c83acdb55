package clientapi

import (
	"strconv"
	"sync"

	"maunium.net/go/mautrix"
)

// longPollRetryAfterMS is the retry_after_ms of a refused long-poll: by then
// one of the user's waiting polls has usually answered.
const longPollRetryAfterMS = 1000

// longPollLimiter caps how many /sync long-polls one user may have waiting at
// once (config max_long_polls_per_user), so one account cannot tie up an
// unbounded number of goroutines and connections. Only requests that wait
// count: initial syncs and timeout=0 polls answer at once and are not limited.
type longPollLimiter struct {
	max int // 0: no cap

	mu     sync.Mutex
	active map[string]int
}

func newLongPollLimiter(max int) *longPollLimiter {
	return &longPollLimiter{max: max, active: make(map[string]int)}
}

// acquire takes one of userID's long-poll slots; release gives it back and
// must be called exactly once. At the cap it returns 429 M_LIMIT_EXCEEDED.
func (l *longPollLimiter) acquire(userID string) (release func(), err error) {
	if l == nil || l.max <= 0 {
		return func() {}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.active[userID] >= l.max {
		return nil, mautrix.MLimitExceeded.
			WithMessage("Too many concurrent /sync long-polls for this user (at most %d)", l.max).
			WithExtraField("retry_after_ms", longPollRetryAfterMS).
			WithExtraHeader("Retry-After", strconv.Itoa((longPollRetryAfterMS+999)/1000))
	}
	l.active[userID]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.active[userID]--; l.active[userID] <= 0 {
				delete(l.active, userID) // the map holds only users with waiting polls
			}
		})
	}, nil
}

// waiting reports userID's waiting long-polls (for tests and metrics).
func (l *longPollLimiter) waiting(userID string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.active[userID]
}

// waitsForSync reports whether a /sync request may long-poll (and so takes a
// slot of longPollLimiter): incremental, not full_state, with a timeout.
func (req *syncRequest) waitsForSync() bool {
	return req.since != nil && !req.fullState && req.timeout > 0
}
