// Command agentspace runs the AgentSpace homeserver and its admin tools.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/agentspace/agentspace/clientapi"
	"github.com/agentspace/agentspace/config"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches subcommands; with none it serves.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(args, stderr)
	case "check-config":
		err = checkConfig(args, stdout)
	case "bench":
		if len(args) > 0 && args[0] == "soak" {
			err = benchSoak(args[1:], stdout, stderr)
		} else if len(args) > 0 && args[0] == "appservice" {
			err = benchAppservice(args[1:], stdout, stderr)
		} else if len(args) > 0 && args[0] == "ws" {
			err = benchWS(args[1:], stdout, stderr)
		} else {
			err = bench(args, stdout, stderr)
		}
	case "appservice":
		err = appserviceCmd(args, stdout, stderr)
	case "migrate-sqlite-to-postgres":
		err = migrateSQLiteToPostgres(args, stdout, stderr)
	case "admin":
		err = adminCmd(args, stdout, stderr)
	case "bridges":
		err = bridgesCmd(args, stdout, stderr)
	case "openclaw":
		err = openclawCmd(args, stdout, stderr) // openclaw.go
	case "rooms":
		err = roomsCmd(args, stdout, stderr) // rooms.go
	case "help":
		usage(stdout)
	default:
		fmt.Fprintf(stderr, "agentspace: unknown command %q\n", cmd)
		usage(stderr)
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "agentspace:", err)
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage: agentspace [command] [flags]

Commands:
  serve          run the homeserver (default)
  check-config   validate the configuration and exit
  bench          measure throughput, sync latency and resource use over HTTP
                 ("bench appservice": delivery rate and lag to an appservice)
                 ("bench ws": WebSocket fan-out latency of the agent gateway)
                 ("bench soak": long steady load; memory over time, p99s, errors)
  appservice new write an application service registration with fresh tokens
  migrate-sqlite-to-postgres --from DB_PATH --to DATABASE_URL
                 copy a stopped server's SQLite database into empty PostgreSQL
  admin          manage users, rooms and registration tokens of a running server
                 (Synapse's admin API; "agentspace admin help")
  bridges status show each webhook's and hook's lag and last error (running server)
  openclaw link  provision OpenClaw agents as Matrix bots and write OpenClaw's Matrix config
  openclaw bindings
                 explain which agent receives a message posted in each room
  rooms          observer rooms: create, export (transcript), stats, loop-breaker
  help           show this help

Run "agentspace <command> -h" for a command's flags.
`)
}

func loadConfig(fs *flag.FlagSet, args []string) (*config.Config, error) {
	path := fs.String("config", "", "YAML configuration file (optional; environment variables override it)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return config.Load(*path, os.LookupEnv)
}

func newLogger(level string, w io.Writer) *slog.Logger {
	var lvl slog.Level
	switch level {
	case "error":
		lvl = slog.LevelError
	case "warn":
		lvl = slog.LevelWarn
	case "debug":
		lvl = slog.LevelDebug
	default:
		lvl = slog.LevelInfo
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl}))
}

func serve(args []string, stderr io.Writer) error {
	cfg, err := loadConfig(flag.NewFlagSet("serve", flag.ContinueOnError), args)
	if err != nil {
		return err
	}
	log := newLogger(cfg.LogLevel, stderr)
	if _, set := os.LookupEnv("GOGC"); !set {
		// The live heap is small (tens of MB) and mostly short-lived request
		// garbage: collecting at 200% growth instead of 100% costs ~8 MB of RSS
		// and saves ~10% of the CPU per message. GOGC still overrides it.
		debug.SetGCPercent(200)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv, err := clientapi.NewServer(ctx, cfg, log)
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		_ = srv.Shutdown(context.Background())
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}

func checkConfig(args []string, stdout io.Writer) error {
	cfg, err := loadConfig(flag.NewFlagSet("check-config", flag.ContinueOnError), args)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "configuration OK (server_name %s, database %s)\n", cfg.ServerName, map[bool]string{true: "postgres", false: cfg.Database.Path}[cfg.UsesPostgres()])
	return nil
}
