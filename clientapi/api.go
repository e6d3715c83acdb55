// Package clientapi serves the Matrix client-server API over HTTP: routing,
// authentication, request decoding and response encoding. Room logic lives
// in package rooms; handlers check the shape of requests and call it.
package clientapi

import (
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/adminapi"
	"github.com/agentspace/agentspace/appservice"
	"github.com/agentspace/agentspace/bridge/gateway"
	"github.com/agentspace/agentspace/bridge/webhook"
	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// API holds what the handlers depend on.
type API struct {
	cfg     *config.Config
	db      *storage.DB
	rooms   *rooms.Service
	log     *slog.Logger
	metrics *metrics
	limiter *rateLimiter
	nonces  *nonceStore
	// accounts holds UIA sessions, device last-seen state and the dummy password hash (account.go).
	accounts *accountState
	typing   *rooms.Typing
	// presence caches the last presence written per user (see setPresence).
	presence *presenceCache
	// keyCountCache and unread keep idle /sync long-polls off the database.
	keyCountCache *keyCountCache
	unread        *unreadCache
	// syncFilters caches parsed /sync filters (filtercache.go).
	syncFilters *syncFilterCache
	// sessions caches authenticated tokens (see sessionCache).
	sessions *sessionCache
	// admin serves Synapse's admin API (package adminapi).
	admin *adminapi.API
	// longPolls caps the waiting /sync long-polls per user (limits.go).
	longPolls *longPollLimiter
	// appservices holds the registrations and delivers to them (appservice.go).
	appservices *appservice.Deliverer
	// gateway serves /api and /ws; webhooks runs the webhooks and hooks (bridges.go).
	gateway  *gateway.Gateway
	webhooks *webhook.Runner
	// agents holds the loop breaker and the bot cache (agents.go).
	agents *agentsState
}

// NewAPI builds the client API. reg receives the HTTP metrics (nil: a fresh registry).
func NewAPI(cfg *config.Config, db *storage.DB, rs *rooms.Service, log *slog.Logger, reg *prometheus.Registry) *API {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	a := &API{
		cfg:      cfg,
		db:       db,
		rooms:    rs,
		log:      log,
		metrics:  newMetrics(reg),
		limiter:  newRateLimiter(cfg.RateLimit),
		nonces:   newNonceStore(),
		accounts: newAccountState(),
		typing:   rs.Typing(),
		presence: newPresenceCache(),

		keyCountCache: newKeyCountCache(),
		unread:        newUnreadCache(),
		syncFilters:   newSyncFilterCache(),
		sessions:      newSessionCache(),
		longPolls:     newLongPollLimiter(cfg.MaxLongPollsPerUser),
	}
	// The admin API (/_synapse/admin/...) authenticates with this API's tokens.
	a.admin = adminapi.New(adminapi.Deps{Config: cfg, DB: db, Rooms: rs, Log: log,
		Authenticate: a.AdminCaller, HashPassword: a.hashPassword})
	a.gateway = a.newGateway() // the agent gateway, /api and /ws (bridges.go)
	a.agents = newAgentsState(a)
	return a
}

// wrap turns a handler into an http.Handler that renders its error.
func (a *API) wrap(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			writeError(w, r, a.log, err)
		}
	})
}

// public wraps a handler that needs no authentication.
func (a *API) public(h handler) http.Handler { return a.wrap(h) }

// clientPrefixes are the path prefixes the client API is served under:
// older Element releases call only r0.
var clientPrefixes = []string{"/_matrix/client/v3", "/_matrix/client/r0", "/_matrix/client/unstable"}

// routes collects route registrations with the prefixes they are served under.
type routes struct{ root *mux.Router }

// client registers h at path under v3, r0 and unstable.
func (rt routes) client(path string, h http.Handler, methods ...string) {
	for _, p := range clientPrefixes {
		rt.root.Handle(p+path, h).Methods(append(methods, http.MethodOptions)...)
	}
}

// v1 registers h at path under /_matrix/client/v1 (and unstable).
func (rt routes) v1(path string, h http.Handler, methods ...string) {
	for _, p := range []string{"/_matrix/client/v1", "/_matrix/client/unstable"} {
		rt.root.Handle(p+path, h).Methods(append(methods, http.MethodOptions)...)
	}
}

// exact registers h at a full path.
func (rt routes) exact(path string, h http.Handler, methods ...string) {
	rt.root.Handle(path, h).Methods(append(methods, http.MethodOptions)...)
}

// Handler returns the whole HTTP handler: routes plus CORS, body limit,
// panic recovery, logging and metrics.
func (a *API) Handler(reg *prometheus.Registry) http.Handler {
	return a.cors(a.recoverer(a.limitBody(refuseNULPath(a.router(reg)))))
}

// router builds the routes (the authorization matrix test walks them).
func (a *API) router(reg *prometheus.Registry) *mux.Router {
	root := mux.NewRouter()
	root.SkipClean(true) // state keys may contain encoded slashes
	root.UseEncodedPath()
	rt := routes{root: root}
	// gorilla/mux tries routes in registration order: the hottest first.
	a.registerSync(rt)
	a.registerRoomSend(rt) // /send next: mux escapes the path once per route it tries
	a.registerDiscovery(rt)
	a.registerAccount(rt)
	a.registerRooms(rt)
	a.registerEphemeral(rt)
	a.registerKeys(rt)
	a.registerMedia(rt)
	a.registerRegistrationTokenRoutes(rt) // uia.go
	a.admin.Register(root)
	a.registerAppserviceRoutes(rt)
	a.registerBridges(root)
	a.registerAgentspaceAdmin(rt) // agentspace_admin.go
	if reg != nil {
		root.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{})).Methods(http.MethodGet)
	}
	root.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusOK)
			return
		}
		mautrix.MUnrecognized.WithMessage("Unrecognized request").Write(w)
	})
	root.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mautrix.MUnrecognized.WithStatus(http.StatusMethodNotAllowed).WithMessage("Method not allowed").Write(w)
	})
	root.Use(a.metrics.middleware)
	return root
}

// cors lets browsers on other origins (Element Web, Cinny) call every
// endpoint; preflight OPTIONS requests are answered directly.
func (a *API) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization, Date")
		if r.Method == http.MethodOptions {
			h.Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte("{}"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// limitBody caps request bodies (media uploads have their own, larger limit).
func (a *API) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limit := a.cfg.MaxRequestBodyBytes
		if isUploadPath(r.URL.Path) {
			limit = a.cfg.Media.MaxUploadBytes
		}
		if r.ContentLength > limit {
			mautrix.MTooLarge.WithMessage("Request body is larger than %d bytes", limit).Write(w)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		next.ServeHTTP(w, r)
	})
}

func (a *API) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				a.log.ErrorContext(r.Context(), "panic in handler", "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				mautrix.MUnknown.WithMessage("Internal server error").Write(w)
			}
		}()
		next.ServeHTTP(w, r)
	})
}

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentspace_http_requests_total", Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "agentspace_http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30},
		}, []string{"route", "method"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (m *metrics) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		route := "unknown"
		if cr := mux.CurrentRoute(r); cr != nil {
			if t, err := cr.GetPathTemplate(); err == nil {
				route = t
			}
		}
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		m.requests.WithLabelValues(route, r.Method, strconv.Itoa(rec.status)).Inc()
		m.duration.WithLabelValues(route, r.Method).Observe(time.Since(start).Seconds())
	})
}
