package clientapi

import (
	"context"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/bridge/gateway"
	"github.com/agentspace/agentspace/bridge/webhook"
	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// The bridges (issue 6): the simple agent gateway (/api and /ws, package
// bridge/gateway) authenticates with this API's tokens and posts through
// its send path; the webhooks and hooks (package bridge/webhook) run beside
// the appservice workers, and their status is an admin endpoint.

// newGateway builds the agent gateway on this API's authentication, send
// path (loop breaker included), rate limiter and alias lookup.
func (a *API) newGateway() *gateway.Gateway {
	return gateway.New(gateway.Deps{
		Rooms: a.rooms, DB: a.db, Log: a.log, ServerName: a.cfg.ServerName,
		Authenticate: a.gatewayCaller,
		Send: func(ctx context.Context, c *gateway.Caller, roomID string, req rooms.EventRequest) (*storage.Event, error) {
			return a.sendMessage(ctx, sessionOfCaller(c), roomID, req)
		},
		RateLimit: a.gatewayRateLimit,
		ResolveAlias: func(ctx context.Context, alias string) (string, error) {
			al, err := a.lookupAlias(ctx, alias)
			if err != nil {
				return "", err
			}
			return al.RoomID, nil
		},
		CreatePublicRoom: func(ctx context.Context, c *gateway.Caller, name, topic string) (string, error) {
			return a.rooms.CreateObserverRoom(ctx, rooms.ObserverRoomRequest{
				Name: name, Creator: c.UserID, Topic: topic, Moderators: a.cfg.Agents.ObserverModerators,
			})
		},
		WriteError: func(w http.ResponseWriter, r *http.Request, err error) { writeError(w, r, a.log, err) },
	})
}

// registerBridges mounts the gateway (/api/..., /ws) and the bridges'
// admin status.
func (a *API) registerBridges(root *mux.Router) {
	root.PathPrefix("/api/").Handler(a.gateway.APIHandler())
	root.Handle("/ws", a.gateway.WSHandler())
	root.Handle("/_agentspace/admin/v1/bridges", a.authed(a.bridgeStatus)).Methods(http.MethodGet, http.MethodOptions)
}

// gatewayCaller authenticates token (a WebSocket frame's), or with token ""
// the request's own Authorization header or access_token parameter.
func (a *API) gatewayCaller(r *http.Request, token string) (*gateway.Caller, error) {
	if token != "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+token)
		if q := r.URL.Query(); q.Has("access_token") {
			q.Del("access_token")
			r.URL.RawQuery = q.Encode()
		}
	}
	s, err := a.authenticate(r)
	if err != nil {
		return nil, err
	}
	return &gateway.Caller{UserID: s.UserID, DeviceID: s.DeviceID, IsAdmin: s.IsAdmin, IsGuest: s.IsGuest,
		AppserviceID: s.AppserviceID, AppserviceToken: s.AppserviceToken, TokenHash: s.TokenHash}, nil
}

func sessionOfCaller(c *gateway.Caller) *Session {
	return &Session{UserID: c.UserID, DeviceID: c.DeviceID, IsGuest: c.IsGuest, IsAdmin: c.IsAdmin,
		AppserviceID: c.AppserviceID, AppserviceToken: c.AppserviceToken, TokenHash: c.TokenHash}
}

// gatewayRateLimit applies the per-user token bucket of rate-limited
// endpoints to gateway messages.
func (a *API) gatewayRateLimit(c *gateway.Caller) error {
	if !a.limiter.enabled || a.rateLimitExempt(sessionOfCaller(c)) {
		return nil
	}
	if ok, wait := a.limiter.allow("user:"+c.UserID, time.Now()); !ok {
		return mautrix.MLimitExceeded.WithMessage("Too many requests").
			WithExtraField("retry_after_ms", max(wait.Milliseconds(), 1)).
			WithExtraHeader("Retry-After", strconv.FormatInt(max(int64(math.Ceil(wait.Seconds())), 1), 10))
	}
	return nil
}

// bridgeStatus is GET /_agentspace/admin/v1/bridges (server admins): each
// webhook's and hook's target (scheme and host only), delivered position,
// backlog, lag and last error. `agentspace bridges status` prints it.
func (a *API) bridgeStatus(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	if !s.IsAdmin || s.AppserviceToken {
		return mautrix.MForbidden.WithMessage("You are not a server admin")
	}
	list := []webhook.Status{}
	if a.webhooks != nil {
		var err error
		if list, err = a.webhooks.Statuses(r.Context()); err != nil {
			return err
		}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"bridges": list})
}
