package clientapi

import (
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/config"
)

// rateLimiter keeps one token bucket per caller (user id, or client IP for
// unauthenticated requests). Buckets idle long enough to have refilled are
// dropped, so memory stays bounded by the number of recently active callers.
type rateLimiter struct {
	enabled bool
	limit   rate.Limit
	burst   int
	// idle is how long after its last use a bucket is full again; dropping
	// it then loses nothing.
	idle time.Duration

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

// maxBuckets caps the map even under a flood of distinct callers; beyond
// it the sweep evicts the least recently used buckets.
const maxBuckets = 100_000

// newRateLimiter builds the limiter from the config (a disabled one lets
// everything through).
func newRateLimiter(cfg config.RateLimitConfig) *rateLimiter {
	rl := &rateLimiter{enabled: cfg.Enabled && cfg.PerSecond > 0, buckets: make(map[string]*bucket)}
	if !rl.enabled {
		return rl
	}
	rl.limit = rate.Limit(cfg.PerSecond)
	rl.burst = max(cfg.Burst, 1)
	rl.idle = time.Duration(float64(rl.burst)/cfg.PerSecond*float64(time.Second)) + time.Second
	return rl
}

// allow takes one token from key's bucket. When the bucket is empty it
// returns false and how long until a token is available.
func (rl *rateLimiter) allow(key string, now time.Time) (bool, time.Duration) {
	if !rl.enabled {
		return true, 0
	}
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if now.Sub(rl.lastSweep) > rl.idle || len(rl.buckets) >= maxBuckets {
		rl.sweepLocked(now)
	}
	b := rl.buckets[key]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(rl.limit, rl.burst)}
		rl.buckets[key] = b
	}
	b.last = now
	res := b.lim.ReserveN(now, 1)
	if !res.OK() {
		return false, time.Second
	}
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now) // a refused request must not consume the token it waits for
		return false, d
	}
	return true, 0
}

// sweepLocked drops refilled buckets; if that is not enough (a flood of
// distinct callers), it drops the least recently used half.
func (rl *rateLimiter) sweepLocked(now time.Time) {
	rl.lastSweep = now
	for k, b := range rl.buckets {
		if now.Sub(b.last) > rl.idle {
			delete(rl.buckets, k)
		}
	}
	if len(rl.buckets) < maxBuckets {
		return
	}
	times := make([]time.Time, 0, len(rl.buckets))
	for _, b := range rl.buckets {
		times = append(times, b.last)
	}
	slices.SortFunc(times, time.Time.Compare)
	cutoff := times[len(times)/2]
	for k, b := range rl.buckets {
		if !b.last.After(cutoff) {
			delete(rl.buckets, k)
		}
	}
}

// rateLimitKey names the bucket a request draws from, or exempt=true.
// This is the one place that decides who is exempt: appservices (and their
// users) whose registration says rate_limited: false.
func (a *API) rateLimitKey(r *http.Request) (key string, exempt bool) {
	if s := sessionFrom(r.Context()); s != nil {
		return "user:" + s.UserID, a.rateLimitExempt(s)
	}
	return "ip:" + clientIP(r), false
}

// rateLimited wraps h with the per-caller token bucket: over the limit the
// caller gets 429 M_LIMIT_EXCEEDED with retry_after_ms and Retry-After.
// Wrap it inside authed/optionalAuth so the session is known:
// a.authed(a.rateLimited(h)).
func (a *API) rateLimited(h handler) handler {
	if !a.limiter.enabled {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		key, exempt := a.rateLimitKey(r)
		if !exempt {
			if ok, wait := a.limiter.allow(key, time.Now()); !ok {
				ms := max(wait.Milliseconds(), 1)
				secs := int64(math.Ceil(wait.Seconds()))
				return mautrix.MLimitExceeded.WithMessage("Too many requests").
					WithExtraField("retry_after_ms", ms).
					WithExtraHeader("Retry-After", strconv.FormatInt(max(secs, 1), 10))
			}
		}
		return h(w, r)
	}
}

// clientIP is the caller's address. X-Forwarded-For is trusted only from a
// loopback peer (a reverse proxy on the same host), and then only its last
// entry, the one that proxy appended.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
			parts := strings.Split(xff, ",")
			if fwd := strings.TrimSpace(parts[len(parts)-1]); net.ParseIP(fwd) != nil {
				return fwd
			}
		}
	}
	return host
}
