package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/agentspace/agentspace/appservice"
	"github.com/agentspace/agentspace/bridge/openclaw"
	"github.com/agentspace/agentspace/config"
)

const openclawUsage = `Usage: agentspace openclaw <command> [flags]

Commands:
  link      create a Matrix bot per OpenClaw agent (built-in agents appservice),
            give each a token and device, create observer rooms, and print or
            write OpenClaw's channels.matrix section and bindings
  bindings  explain which agent receives a message posted in each Matrix room

Both talk to a running AgentSpace (--server, default $AGENTSPACE_SERVER or the
configured port on 127.0.0.1) with the built-in agents appservice's token, read
from agents-appservice.yaml next to the database (-config, or DB_PATH).
Run "agentspace openclaw <command> -h" for the flags.
`

// openclawCmd dispatches "agentspace openclaw <command>".
func openclawCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, openclawUsage)
		return errors.New("openclaw: missing command")
	}
	switch args[0] {
	case "link":
		return openclawLink(args[1:], stdout, stderr)
	case "bindings":
		return openclawBindings(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, openclawUsage)
		return nil
	}
	fmt.Fprint(stderr, openclawUsage)
	return fmt.Errorf("openclaw: unknown command %q", args[0])
}

// agentConn is how the openclaw and rooms commands reach a running server.
type agentConn struct {
	configPath   string
	server       string
	registration string
	token        string
	cfg          *config.Config
}

// flags registers the connection flags.
func (c *agentConn) flags(fs *flag.FlagSet, withToken bool) {
	fs.StringVar(&c.configPath, "config", "", "AgentSpace's YAML configuration (finds the data directory; environment variables apply as for the server)")
	fs.StringVar(&c.server, "server", os.Getenv("AGENTSPACE_SERVER"), "AgentSpace base URL (default: $AGENTSPACE_SERVER, else http://127.0.0.1:<port>)")
	fs.StringVar(&c.registration, "registration", "", "appservice registration to act as (default: the built-in agents-appservice.yaml in the data directory)")
	if withToken {
		fs.StringVar(&c.token, "token", os.Getenv("AGENTSPACE_ADMIN_TOKEN"), "a server admin's access token instead of the appservice's (default: $AGENTSPACE_ADMIN_TOKEN)")
	}
}

// client loads the configuration and returns a client with the token to use.
func (c *agentConn) client(needAppservice bool) (*openclaw.Client, error) {
	cfg, err := config.Load(c.configPath, os.LookupEnv)
	if err != nil {
		return nil, err
	}
	c.cfg = cfg
	if c.server == "" {
		host := cfg.BindAddress
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			host = "127.0.0.1"
		}
		c.server = "http://" + net.JoinHostPort(host, strconv.Itoa(cfg.Port))
	}
	cl := &openclaw.Client{BaseURL: strings.TrimRight(c.server, "/")}
	if c.token != "" && !needAppservice {
		cl.ASToken = c.token
		return cl, nil
	}
	path := c.registration
	if path == "" {
		path = appservice.BuiltinPath(cfg)
	}
	reg, err := appservice.ReadBuiltin(path)
	if err != nil {
		return nil, err
	}
	cl.ASToken = reg.AppToken
	return cl, nil
}

// defaultOpenClawConfig is where OpenClaw keeps its configuration.
func defaultOpenClawConfig() string {
	if p := os.Getenv("OPENCLAW_CONFIG_PATH"); p != "" {
		return p
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "openclaw.json"
	}
	return filepath.Join(home, ".openclaw", "openclaw.json")
}

// splitPositional parses flags that may come before, between or after
// positional arguments, and returns the positional ones.
func splitPositional(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func commandContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	return ctx, func() { cancel(); stop() }
}

func openclawLink(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("openclaw link", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var conn agentConn
	conn.flags(fs, false)
	ocPath := fs.String("openclaw-config", defaultOpenClawConfig(), "OpenClaw's configuration (JSON5)")
	var rooms stringList
	fs.Var(&rooms, "rooms", `observer room for the agents: "lobby" (all agents) or "lobby=alex,mia" (repeatable)`)
	write := fs.Bool("write", false, "merge the result into the OpenClaw config (keeps a .bak; only Matrix accounts and bindings change)")
	print := fs.Bool("print", false, "print the channels.matrix section and bindings (the default without --write)")
	rotate := fs.Bool("rotate", false, "issue fresh tokens on new devices and revoke the old ones")
	homeserver := fs.String("homeserver", "", "homeserver URL written for OpenClaw (default: --server)")
	prefix := fs.String("user-prefix", "", "localpart prefix of agent users (default: agents.user_prefix of the config)")
	asJSON := fs.Bool("json", false, "print a JSON report of what was done instead (no tokens)")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: agentspace openclaw link [--openclaw-config PATH] [--rooms NAME[=a,b]]... [--write | --print] [--rotate]\n\n")
		fs.PrintDefaults()
	}
	if _, err := splitPositional(fs, args); err != nil {
		return err
	}
	oc, err := openclaw.Load(*ocPath)
	if err != nil {
		return fmt.Errorf("reading the OpenClaw config: %w", err)
	}
	cl, err := conn.client(true)
	if err != nil {
		return err
	}
	opts := openclaw.LinkOptions{Client: cl, Homeserver: *homeserver, UserPrefix: conn.cfg.Agents.UserPrefix, Rotate: *rotate,
		Logf: func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }}
	if *prefix != "" {
		opts.UserPrefix = *prefix
	}
	for _, r := range rooms {
		spec, err := openclaw.ParseRoomSpec(r)
		if err != nil {
			return err
		}
		opts.Rooms = append(opts.Rooms, spec)
	}
	ctx, cancel := commandContext()
	defer cancel()
	res, err := openclaw.Link(ctx, oc, opts)
	if err != nil {
		return err
	}
	for _, w := range res.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	if *write {
		merged, changes := res.Merge(oc.Raw)
		wr, err := openclaw.WriteMerged(oc, merged)
		if err != nil {
			return fmt.Errorf("writing %s: %w", oc.Path, err)
		}
		switch {
		case !wr.Changed:
			fmt.Fprintf(stderr, "%s is up to date: nothing changed\n", oc.Path)
		default:
			for _, c := range changes {
				fmt.Fprintln(stderr, "  set", c)
			}
			how := "edited in place (comments and formatting kept)"
			if !wr.InPlace {
				how = "rewritten as JSON"
				if oc.HasComments {
					how += " — its JSON5 comments were dropped"
				}
			}
			fmt.Fprintf(stderr, "%s %s; previous version in %s\n", oc.Path, how, wr.Backup)
		}
	}
	switch {
	case *asJSON:
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	case *print || !*write:
		fmt.Fprintln(stdout, "// Merge into your OpenClaw config (or run again with --write). Contains access tokens: keep it private.")
		fmt.Fprintln(stdout, openclaw.Render(res.Section()))
	}
	return nil
}

func openclawBindings(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("openclaw bindings", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var conn agentConn
	conn.flags(fs, false)
	ocPath := fs.String("openclaw-config", defaultOpenClawConfig(), "OpenClaw's configuration (JSON5)")
	var rooms stringList
	fs.Var(&rooms, "room", "also explain this room (id or #alias:server; repeatable)")
	offline := fs.Bool("offline", false, "do not ask the server (no alias resolution, no joined check)")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: agentspace openclaw bindings [--openclaw-config PATH] [--room ROOM]... [--offline]\n\n")
		fs.PrintDefaults()
	}
	if _, err := splitPositional(fs, args); err != nil {
		return err
	}
	oc, err := openclaw.Load(*ocPath)
	if err != nil {
		return fmt.Errorf("reading the OpenClaw config: %w", err)
	}
	opts := openclaw.ExplainOptions{Rooms: rooms}
	if !*offline {
		cl, err := conn.client(true)
		if err != nil {
			fmt.Fprintf(stderr, "not asking the server (%v); explaining from the config alone\n", err)
		} else {
			opts.Client = cl
		}
	}
	ctx, cancel := commandContext()
	defer cancel()
	exs, err := oc.ExplainRooms(ctx, opts)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(exs)
	}
	if def, ok := oc.DefaultAgent(); ok {
		fmt.Fprintf(stdout, "Agents: %s; default agent: %s\n\n", agentList(oc), def)
	} else {
		fmt.Fprintf(stdout, "Agents: %s; no default agent\n\n", agentList(oc))
	}
	openclaw.PrintExplanations(stdout, exs, len(oc.MatrixAccounts()))
	return nil
}

func agentList(oc *openclaw.Config) string {
	if len(oc.Agents) == 0 {
		return "(none listed: the implicit agent main)"
	}
	ids := make([]string, len(oc.Agents))
	for i, a := range oc.Agents {
		ids[i] = a.ID
	}
	return strings.Join(ids, ", ")
}
