package clientapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/agentspace/agentspace/appservice"
	"github.com/agentspace/agentspace/bridge/webhook"
	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// Server is a running homeserver: database, room engine and HTTP listener.
type Server struct {
	cfg   *config.Config
	log   *slog.Logger
	db    *storage.DB
	rooms *rooms.Service
	api   *API
	http  *http.Server
	// appservices delivers events to the registered application services.
	appservices *appservice.Deliverer
	ln          net.Listener
	// feed and cluster keep instances sharing a PostgreSQL database in
	// step (cluster.go); nil on SQLite.
	feed    *storage.Feed
	cluster *rooms.Cluster

	// baseCtx is the parent of every request context; cancelling it ends
	// long-polls so shutdown does not wait for their timeouts.
	baseCtx    context.Context
	cancelBase context.CancelFunc
	bg         sync.WaitGroup
	stopOnce   sync.Once
}

// Limits of the HTTP listener against slow and idle clients: a client that
// dribbles its request headers (slow-loris) is cut off after
// ReadHeaderTimeout, one that dribbles its body after ReadTimeout (which
// covers the largest upload at about 450 KB/s), and an idle keep-alive
// connection is closed after IdleTimeout.
const (
	ReadHeaderTimeout = 10 * time.Second
	ReadTimeout       = 2 * time.Minute
	IdleTimeout       = 2 * time.Minute
	MaxHeaderBytes    = 64 << 10
)

// NewServer opens the database (running migrations), loads or creates the
// signing key and builds the API. It starts nothing.
func NewServer(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Server, error) {
	registry, err := loadAppservices(cfg, log) // configured + built-in agents appservice (agents.go)
	if err != nil {
		return nil, err
	}
	db, err := storage.Open(ctx, storage.Options{SQLitePath: cfg.Database.Path, PostgresURL: cfg.Database.URL})
	if err != nil {
		return nil, err
	}
	keyPath := filepath.Join(filepath.Dir(cfg.Database.Path), "signing.key")
	key, err := rooms.LoadOrCreateSigningKey(keyPath)
	if err != nil {
		db.Close()
		return nil, err
	}
	rs, err := rooms.New(ctx, db, cfg.ServerName, key, log)
	if err != nil {
		db.Close()
		return nil, err
	}
	feed, cluster, err := joinCluster(ctx, cfg.Database.URL, db, rs, log)
	if err != nil {
		db.Close()
		return nil, err
	}
	if err := prepareAgentsAppservices(ctx, cfg, db, registry); err != nil {
		if feed != nil {
			feed.Close()
		}
		db.Close()
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	deliverer := appservice.NewDeliverer(db, rs, registry, log, reg, appserviceDelivery(cfg))
	api := NewAPI(cfg, db, rs, log, reg)
	api.appservices = deliverer
	api.webhooks = webhook.New(db, rs, log, reg, cfg, appserviceDelivery(cfg)) // webhooks and hooks (bridges.go)
	// Stream consumers get their cursors now, before anything is served.
	if err := errors.Join(deliverer.Prepare(ctx), api.webhooks.Prepare(ctx)); err != nil {
		if feed != nil {
			feed.Close()
		}
		db.Close()
		return nil, err
	}
	baseCtx, cancel := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, log: log, db: db, rooms: rs, api: api, appservices: deliverer, baseCtx: baseCtx, cancelBase: cancel,
		feed: feed, cluster: cluster}
	s.http = &http.Server{
		Handler:           api.Handler(reg),
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// Start listens on the configured address and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.cfg.ListenAddr())
	if err != nil {
		return fmt.Errorf("listening on %s: %w", s.cfg.ListenAddr(), err)
	}
	s.ln = ln
	s.bg.Add(4)
	go func() {
		defer s.bg.Done()
		s.appservices.Run(s.baseCtx)
	}()
	go func() {
		defer s.bg.Done()
		s.rooms.Typing().Run(s.baseCtx)
	}()
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.api.webhooks.Run(s.baseCtx) // webhooks and hooks: stream consumers like the appservices
	}()
	go func() {
		defer s.bg.Done()
		s.db.RunCheckpoints(s.baseCtx, time.Second)
	}()
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.db.RunSearchIndexer(s.baseCtx, func(err error) {
			s.log.Error("indexing messages for search failed; will retry", "err", err)
		})
	}()
	if s.cluster != nil {
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			s.cluster.Run(s.baseCtx)
		}()
	}
	go func() {
		defer s.bg.Done()
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http server stopped", "err", err)
		}
	}()
	s.log.Info("listening", "addr", ln.Addr().String(), "server_name", s.cfg.ServerName, "database", s.db.Dialect().String())
	return nil
}

// Addr is the bound listen address (useful with port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// BaseURL is http://<bound address>.
func (s *Server) BaseURL() string { return "http://" + s.Addr() }

// DB exposes the database (for tests and admin commands).
func (s *Server) DB() *storage.DB { return s.db }

// Rooms exposes the room engine.
func (s *Server) Rooms() *rooms.Service { return s.rooms }

// Shutdown stops accepting requests, ends long-polls, waits for in-flight
// requests up to ctx's deadline and closes the database last. Idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.stopOnce.Do(func() {
		// WebSockets first, while their request contexts still live, so each
		// gets a 1001 close frame rather than a cut connection (they are
		// hijacked: http.Server.Shutdown would not wait for them anyway).
		gerr := s.api.gateway.Close(ctx)
		s.cancelBase()
		err = s.http.Shutdown(ctx)
		if err == nil {
			err = gerr
		}
		if aerr := s.api.admin.Close(ctx); err == nil {
			err = aerr // admin tasks (room deletions, purges) finish before the database closes
		}
		s.bg.Wait()
		if s.feed != nil {
			s.feed.Close()
		}
		if cerr := s.db.Close(); err == nil {
			err = cerr
		}
		s.log.Info("stopped")
	})
	return err
}
