package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix"
	mautrixas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/agentspace/agentspace/storage"
)

// asBenchResult is the report of "agentspace bench appservice" (also --json).
type asBenchResult struct {
	Database        string       `json:"database"`
	Users           int          `json:"users"`
	Rooms           int          `json:"rooms"`
	MessagesSent    int          `json:"messages_sent"`
	EventsDelivered int          `json:"events_delivered"`
	Transactions    int          `json:"transactions"`
	SendSeconds     float64      `json:"send_seconds"`
	DeliverySeconds float64      `json:"delivery_seconds"`
	EventsPerSecond float64      `json:"events_per_second"`
	Lag             latencyStats `json:"delivery_lag"`
	OrderViolations int          `json:"order_violations"`
	Missing         int          `json:"missing"`
	Duplicates      int          `json:"duplicates"`
}

// benchAppservice measures delivery to one appservice while users send:
// events per second delivered and the lag from the start of each send to
// the arrival of the transaction that carries it.
func benchAppservice(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench appservice", flag.ContinueOnError)
	fs.SetOutput(stderr)
	users := fs.Int("users", 10, "concurrent sending users (each sends into its own room)")
	messages := fs.Int("messages", 200, "messages per user")
	jsonPath := fs.String("json", "", "also write the results as JSON to this file")
	postgres := fs.String("postgres", "", "postgres:// URL for the child server (default: SQLite in a temp dir)")
	timeout := fs.Duration("timeout", 5*time.Minute, "abort after this long")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: agentspace bench appservice [flags]\n\nStarts a server with one appservice (a receiver inside this process),\nhas --users users send --messages messages each into their own room,\nand measures events/s delivered to the appservice and the delivery lag.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *users < 1 || *messages < 1 {
		return errors.New("bench appservice: --users and --messages must be at least 1")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	// The receiving appservice: records when each event arrives.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	recv := &asBenchReceiver{arrived: make(map[string]time.Time), order: make(map[string][]string), done: make(chan struct{})}
	reg := mautrixas.Registration{
		ID: "bench", URL: "http://" + ln.Addr().String(), SenderLocalpart: "benchbot",
		AppToken: storage.NewToken("as_"), ServerToken: storage.NewToken("hs_"), RateLimited: new(bool),
		Namespaces: mautrixas.Namespaces{UserIDs: mautrixas.NamespaceList{{Regex: "@benchbot_.*", Exclusive: true}}},
	}
	recv.hsToken = reg.ServerToken
	srvHTTP := &http.Server{Handler: recv, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srvHTTP.Serve(ln) }()
	defer srvHTTP.Close()

	dir, err := os.MkdirTemp("", "agentspace-asbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	regPath := filepath.Join(dir, "bench-as.yaml")
	data, err := yaml.Marshal(&reg)
	if err != nil {
		return err
	}
	if err := os.WriteFile(regPath, data, 0o600); err != nil {
		return err
	}
	server, err := startBenchServer(ctx, *postgres, "APPSERVICE_REGISTRATIONS="+regPath)
	if err != nil {
		return err
	}
	defer server.stop()
	fmt.Fprintf(stderr, "bench appservice: server at %s\n", server.url)

	b := &benchRun{opts: &benchOptions{}, progress: stderr, runID: benchRandomHex(4), baseURL: server.url,
		transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	clients, err := b.registerUsers(ctx, b.localparts("as", *users))
	if err != nil {
		return err
	}
	bot := b.newClient()
	bot.AccessToken = reg.AppToken
	bot.UserID = id.UserID("@benchbot:localhost")
	rooms := make([]id.RoomID, *users)
	for i, cli := range clients {
		resp, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		if err != nil {
			return fmt.Errorf("bench appservice: creating room: %w", err)
		}
		rooms[i] = resp.RoomID
		if _, err := bot.JoinRoomByID(ctx, resp.RoomID); err != nil {
			return fmt.Errorf("bench appservice: appservice joining: %w", err)
		}
	}

	// Send: user i sends into room i, one message after another.
	type sent struct {
		room  id.RoomID
		start time.Time
	}
	var mu sync.Mutex
	sends := make(map[string]sent, *users**messages)
	wantOrder := make(map[id.RoomID][]string)
	recv.expect(*users * *messages)
	start := time.Now()
	err = benchParallel(ctx, *users, *users, func(ctx context.Context, u int) error {
		for m := range *messages {
			body := fmt.Sprintf("as-bench %d/%d", u, m)
			t0 := time.Now()
			if _, err := b.sendMessage(ctx, clients[u], rooms[u], fmt.Sprintf("as%d-%d", u, m), body); err != nil {
				return err
			}
			mu.Lock()
			sends[body] = sent{room: rooms[u], start: t0}
			wantOrder[rooms[u]] = append(wantOrder[rooms[u]], body)
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return err
	}
	sendDone := time.Now()
	select {
	case <-recv.done:
	case <-time.After(60 * time.Second):
	case <-ctx.Done():
		return ctx.Err()
	}

	recv.mu.Lock()
	res := asBenchResult{Database: "sqlite", Users: *users, Rooms: *users, MessagesSent: len(sends),
		EventsDelivered: recv.count, Transactions: recv.txns, Duplicates: recv.dups,
		SendSeconds: sendDone.Sub(start).Seconds()}
	if *postgres != "" {
		res.Database = "postgres"
	}
	var lags []time.Duration
	var last time.Time
	for body, s := range sends {
		at, ok := recv.arrived[body]
		if !ok {
			res.Missing++
			continue
		}
		lags = append(lags, at.Sub(s.start))
		if at.After(last) {
			last = at
		}
	}
	for room, want := range wantOrder {
		got := recv.order[string(room)]
		for i := range min(len(got), len(want)) {
			if got[i] != want[i] {
				res.OrderViolations++
			}
		}
	}
	recv.mu.Unlock()
	res.Lag = benchSummarize(lags)
	if !last.IsZero() {
		res.DeliverySeconds = last.Sub(start).Seconds()
		res.EventsPerSecond = float64(res.EventsDelivered-res.Duplicates) / res.DeliverySeconds
	}

	fmt.Fprintf(stdout, "AgentSpace appservice delivery benchmark (%s)\n", res.Database)
	fmt.Fprintf(stdout, "  %d users sending into %d rooms, %d messages\n", res.Users, res.Rooms, res.MessagesSent)
	fmt.Fprintf(stdout, "  delivered %d events in %d transactions over %.2fs: %.0f events/s (send phase %.2fs)\n",
		res.EventsDelivered, res.Transactions, res.DeliverySeconds, res.EventsPerSecond, res.SendSeconds)
	fmt.Fprintf(stdout, "  delivery lag (send start -> transaction received): p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms\n",
		res.Lag.P50Ms, res.Lag.P90Ms, res.Lag.P99Ms, res.Lag.MaxMs)
	fmt.Fprintf(stdout, "  missing %d, duplicates %d, per-room order violations %d\n", res.Missing, res.Duplicates, res.OrderViolations)
	if err := writeBenchJSON(*jsonPath, res); err != nil {
		return err
	}
	if res.Missing > 0 || res.OrderViolations > 0 {
		return fmt.Errorf("bench appservice: %d missing, %d out of order", res.Missing, res.OrderViolations)
	}
	return server.stop()
}

// asBenchReceiver is the benchmark's appservice endpoint.
type asBenchReceiver struct {
	hsToken string

	mu      sync.Mutex
	arrived map[string]time.Time // message body -> first arrival
	order   map[string][]string  // room -> bodies in arrival order
	count   int
	dups    int
	txns    int
	want    int
	done    chan struct{}
	closed  bool
}

func (r *asBenchReceiver) expect(n int) {
	r.mu.Lock()
	r.want = n
	r.mu.Unlock()
}

func (r *asBenchReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Header.Get("Authorization") != "Bearer "+r.hsToken {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	if req.Method != http.MethodPut || !strings.HasPrefix(req.URL.Path, "/_matrix/app/v1/transactions/") {
		_, _ = w.Write([]byte(`{}`))
		return
	}
	now := time.Now()
	var txn struct {
		Events []*event.Event `json:"events"`
	}
	if err := json.NewDecoder(req.Body).Decode(&txn); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.txns++
	for _, e := range txn.Events {
		if e.Type != event.EventMessage {
			continue
		}
		body, _ := e.Content.Raw["body"].(string)
		if !strings.HasPrefix(body, "as-bench ") {
			continue
		}
		r.count++
		if _, seen := r.arrived[body]; seen {
			r.dups++
			continue
		}
		r.arrived[body] = now
		r.order[string(e.RoomID)] = append(r.order[string(e.RoomID)], body)
	}
	if r.want > 0 && len(r.arrived) >= r.want && !r.closed {
		r.closed = true
		close(r.done)
	}
	r.mu.Unlock()
	_, _ = w.Write([]byte(`{}`))
}
