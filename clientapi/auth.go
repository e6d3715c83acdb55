package clientapi

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/adminapi"
	"github.com/agentspace/agentspace/storage"
)

// Session is the authenticated caller of a request.
type Session struct {
	UserID       string
	DeviceID     string
	IsGuest      bool
	IsAdmin      bool
	AppserviceID string
	// AppserviceToken: the request was made with the appservice's as_token
	// (not with a token of one of its users).
	AppserviceToken bool
	TokenHash       string
}

type sessionKey struct{}

// sessionFrom returns the request's session (nil on unauthenticated routes).
func sessionFrom(ctx context.Context) *Session {
	s, _ := ctx.Value(sessionKey{}).(*Session)
	return s
}

// tokenFromRequest reads the access token from the Authorization header or
// the legacy access_token query parameter.
func tokenFromRequest(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		if t, ok := strings.CutPrefix(h, "Bearer "); ok {
			return strings.TrimSpace(t), true
		}
		return "", true // present but malformed: treated as an unknown token
	}
	if t := r.URL.Query().Get("access_token"); t != "" {
		return t, true
	}
	return "", false
}

var (
	errMissingToken = mautrix.MMissingToken.WithMessage("Missing access token")
	errUnknownToken = mautrix.MUnknownToken.WithMessage("Unknown access token").WithExtraField("soft_logout", false)
)

// AdminCaller authenticates a request for the admin API (package adminapi):
// the same tokens, errors and session cache as every client endpoint. A
// request made with an appservice's as_token is never an admin.
func (a *API) AdminCaller(r *http.Request) (*adminapi.Caller, error) {
	s, err := a.authenticate(r)
	if err != nil {
		return nil, err
	}
	return &adminapi.Caller{UserID: s.UserID, DeviceID: s.DeviceID, IsAdmin: s.IsAdmin && !s.AppserviceToken,
		IsGuest: s.IsGuest, TokenHash: s.TokenHash}, nil
}

// authenticate resolves the request's token to a session.
func (a *API) authenticate(r *http.Request) (*Session, error) {
	token, present := tokenFromRequest(r)
	if !present {
		return nil, errMissingToken
	}
	if token == "" {
		return nil, errUnknownToken
	}
	hash := storage.HashToken(token)
	if reg := a.registry().ByToken(token); reg != nil {
		return a.authenticateAppservice(r, reg, hash)
	}
	gen := a.db.AuthGeneration() // read before the lookup: see sessionCache.put
	if s, expires, ok := a.sessions.get(hash, gen); ok {
		if expires > 0 && time.Now().UnixMilli() >= expires {
			return nil, mautrix.MUnknownToken.WithMessage("Access token has expired").WithExtraField("soft_logout", true)
		}
		a.noteDeviceSeen(r, s)
		return s, nil
	}
	at, err := a.db.AccessTokenByHash(r.Context(), hash)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, errUnknownToken
	} else if err != nil {
		return nil, err
	}
	if at.ExpiresTS > 0 && time.Now().UnixMilli() >= at.ExpiresTS {
		return nil, mautrix.MUnknownToken.WithMessage("Access token has expired").WithExtraField("soft_logout", true)
	}
	u, err := a.db.UserByID(r.Context(), at.UserID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, errUnknownToken
	} else if err != nil {
		return nil, err
	}
	if u.Deactivated {
		return nil, errUnknownToken
	}
	s := &Session{
		UserID:    at.UserID,
		DeviceID:  at.DeviceID,
		IsGuest:   u.IsGuest,
		IsAdmin:   u.IsAdmin || a.cfg.IsAdminLocalpart(u.Localpart),
		TokenHash: hash,
	}
	if u.AppserviceID != nil {
		s.AppserviceID = *u.AppserviceID
	}
	a.sessions.put(hash, s, at.ExpiresTS, gen)
	a.noteDeviceSeen(r, s) // at most one write per device per minute
	return s, nil
}

// authed wraps a handler that needs a logged-in user.
func (a *API) authed(h handler) http.Handler {
	return a.wrap(func(w http.ResponseWriter, r *http.Request) error {
		s, err := a.authenticate(r)
		if err != nil {
			return err
		}
		if s.IsGuest && !guestAllowed(r) {
			return mautrix.RespError{ErrCode: "M_GUEST_ACCESS_FORBIDDEN", StatusCode: http.StatusForbidden, Err: "Guest access not allowed"}
		}
		return h(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, s)))
	})
}

// optionalAuth wraps a handler that works with or without a token (but a
// token that is present must be valid).
func (a *API) optionalAuth(h handler) http.Handler {
	return a.wrap(func(w http.ResponseWriter, r *http.Request) error {
		if _, present := tokenFromRequest(r); !present {
			return h(w, r)
		}
		s, err := a.authenticate(r)
		if err != nil {
			return err
		}
		return h(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, s)))
	})
}

// guestAllowed lists the endpoints guests may call (spec: "Guest access").
func guestAllowed(r *http.Request) bool {
	p := r.URL.Path
	for _, suffix := range []string{"/sync", "/account/whoami", "/logout", "/logout/all", "/pushrules/", "/capabilities",
		"/voip/turnServer", "/keys/upload", "/keys/query", "/keys/claim", "/keys/changes", "/account/password"} {
		if strings.HasSuffix(p, suffix) {
			return true
		}
	}
	for _, part := range []string{"/rooms/", "/profile/", "/join/", "/presence/", "/sendToDevice/", "/devices", "/user/", "/events"} {
		if strings.Contains(p, part) {
			return true
		}
	}
	return false
}

// sessionCache maps token hashes to sessions. An entry is only used while
// the database's auth generation is the one it was read at: any revocation,
// logout, device deletion or user change anywhere drops every entry, so a
// revoked token fails on its very next request.
type sessionCache struct {
	mu      sync.Mutex
	gen     uint64
	entries map[string]cachedSession
}

type cachedSession struct {
	session Session
	expires int64
}

const maxCachedSessions = 50000

func newSessionCache() *sessionCache {
	return &sessionCache{entries: make(map[string]cachedSession)}
}

func (c *sessionCache) get(hash string, gen uint64) (*Session, int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return nil, 0, false
	}
	e, ok := c.entries[hash]
	if !ok {
		return nil, 0, false
	}
	s := e.session // each request gets its own copy
	return &s, e.expires, true
}

// put caches a session looked up at generation gen. gen was read before the
// lookup, so a revocation that raced with it leaves an entry of an old
// generation, which get never returns.
func (c *sessionCache) put(hash string, s *Session, expires int64, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen < c.gen {
		return
	}
	if gen > c.gen || len(c.entries) >= maxCachedSessions {
		c.gen = gen
		c.entries = make(map[string]cachedSession)
	}
	c.entries[hash] = cachedSession{session: *s, expires: expires}
}
