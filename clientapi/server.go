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
	ln    net.Listener

	// baseCtx is the parent of every request context; cancelling it ends
	// long-polls so shutdown does not wait for their timeouts.
	baseCtx    context.Context
	cancelBase context.CancelFunc
	bg         sync.WaitGroup
	stopOnce   sync.Once
}

// NewServer opens the database (running migrations), loads or creates the
// signing key and builds the API. It starts nothing.
func NewServer(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Server, error) {
	if len(cfg.AppServiceConfigFiles) > 0 {
		// Refuse rather than ignore: bots configured here would silently not work.
		return nil, fmt.Errorf("app_service_config_files: application services are not supported by this version yet")
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
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	api := NewAPI(cfg, db, rs, log, reg)
	baseCtx, cancel := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, log: log, db: db, rooms: rs, api: api, baseCtx: baseCtx, cancelBase: cancel}
	s.http = &http.Server{
		Handler:           api.Handler(reg),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
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
	s.bg.Add(3)
	go func() {
		defer s.bg.Done()
		s.rooms.Typing().Run(s.baseCtx)
	}()
	go func() {
		defer s.bg.Done()
		s.db.RunCheckpoints(s.baseCtx, time.Second)
	}()
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
		s.cancelBase()
		err = s.http.Shutdown(ctx)
		s.bg.Wait()
		if cerr := s.db.Close(); err == nil {
			err = cerr
		}
		s.log.Info("stopped")
	})
	return err
}
