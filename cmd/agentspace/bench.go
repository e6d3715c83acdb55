package main

// bench.go implements "agentspace bench": a load test that drives a live
// server over HTTP exactly as a client would and reports each figure next to
// its target.
//
// All requests go through maunium.net/go/mautrix, a real third-party Matrix
// client, so the bench measures what such a client sees. Its per-request
// overhead (JSON encoding, a no-op zerolog logger) is a few microseconds and
// is the same for every phase; plain net/http is used only for the readiness
// probe of the child server, which is not timed.
//
// Without --url the server runs as a child process of the bench (same
// binary, "serve"), which is what lets the bench read the server's CPU time
// and memory from /proc. Client and server then share the machine's CPUs,
// so the figures are conservative.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/agentspace/agentspace/config"
)

// Targets from the performance issue.
const (
	targetThroughput    = 2000.0 // messages per second, send phase
	targetCPUPerMessage = 1.0    // ms of server CPU per message
	targetFanoutP99     = 25.0   // ms, send return → observer receive
	targetRSSMB         = 80.0   // MB peak resident set of the server
)

const (
	benchUserAgent    = "agentspace-bench"
	longPollMs        = 30_000 // /sync timeout of the observers
	readCheckEvery    = 50     // every n-th send is checked for read-your-writes
	fillWorkers       = 4      // concurrent senders used to fill rooms before a measurement
	initialSyncRuns   = 10     // timed /sync calls per filter
	paginationLimit   = 100    // /messages page size
	deliveryGrace     = 20 * time.Second
	observerStartWait = 250 * time.Millisecond
)

// benchOptions are the command-line flags of "agentspace bench".
type benchOptions struct {
	url          string
	senders      int
	observers    int
	messages     int
	rooms        int
	roomMessages int
	paginate     int
	timeline     int
	jsonPath     string
	postgres     string
	instances    int
	timeout      time.Duration
}

func parseBenchFlags(args []string, stderr io.Writer) (*benchOptions, error) {
	o := &benchOptions{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.url, "url", "", "base URL of a running server (default: start one as a child process on 127.0.0.1)")
	fs.IntVar(&o.senders, "senders", 10, "concurrent senders in the send phase")
	fs.IntVar(&o.observers, "observers", 20, "long-polling /sync observers in the send phase")
	fs.IntVar(&o.messages, "messages", 200, "messages per sender in the send phase")
	fs.IntVar(&o.rooms, "rooms", 20, "rooms of the initial-sync user (0 skips the phase)")
	fs.IntVar(&o.roomMessages, "room-messages", 200, "messages per room for the initial-sync phase")
	fs.IntVar(&o.paginate, "paginate", 2000, "messages to page back through with /messages (0 skips the phase)")
	fs.IntVar(&o.timeline, "timeline-limit", 50, "timeline limit in the observers' /sync filter (smaller values force limited timelines and back-fill)")
	fs.StringVar(&o.jsonPath, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&o.postgres, "postgres", "", "postgres:// URL for the child server (default: SQLite in a temp dir)")
	fs.IntVar(&o.instances, "instances", 1, "child server processes on the --postgres database; senders and observers are split between them")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "abort the whole run after this long")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: agentspace bench [flags]\n\nMeasures send throughput, sync fan-out latency, initial sync, pagination,\nserver CPU per message and server memory over HTTP.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("bench: unexpected argument %q", fs.Arg(0))
	}
	var problems []string
	for name, v := range map[string]int{"senders": o.senders, "observers": o.observers, "messages": o.messages, "timeline-limit": o.timeline} {
		if v < 1 {
			problems = append(problems, fmt.Sprintf("--%s must be at least 1", name))
		}
	}
	for name, v := range map[string]int{"rooms": o.rooms, "room-messages": o.roomMessages, "paginate": o.paginate} {
		if v < 0 {
			problems = append(problems, fmt.Sprintf("--%s must not be negative", name))
		}
	}
	if o.rooms > 0 && o.roomMessages < 1 {
		problems = append(problems, "--room-messages must be at least 1 when --rooms is set")
	}
	if o.timeout <= 0 {
		problems = append(problems, "--timeout must be positive")
	}
	if o.url != "" && o.postgres != "" {
		problems = append(problems, "--postgres only applies to the child server; it cannot be combined with --url")
	}
	if o.instances < 1 {
		problems = append(problems, "--instances must be at least 1")
	} else if o.instances > 1 && o.postgres == "" {
		problems = append(problems, "--instances above 1 needs --postgres (instances share one PostgreSQL database)")
	}
	if o.url != "" {
		if u, err := url.Parse(o.url); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			problems = append(problems, fmt.Sprintf("--url %q is not an absolute http(s) URL", o.url))
		}
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return nil, fmt.Errorf("bench: %s", strings.Join(problems, "; "))
	}
	return o, nil
}

// bench runs the benchmark and prints the report to stdout; progress goes to
// stderr. It fails only when the run itself fails, not when a target is missed.
func bench(args []string, stdout, stderr io.Writer) error {
	opts, err := parseBenchFlags(args, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, opts.timeout)
	defer cancel()

	b := &benchRun{opts: opts, progress: stderr, runID: benchRandomHex(4)}
	res, err := b.run(ctx)
	if err != nil {
		return err
	}
	writeBenchReport(stdout, res)
	return writeBenchJSON(opts.jsonPath, res)
}

// writeBenchJSON writes a bench report as indented JSON to path ("" writes
// nothing); every bench mode's --json uses it.
func writeBenchJSON(path string, report any) error {
	if path == "" {
		return nil
	}
	data, err := json.MarshalIndent(report, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: encoding JSON: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench: writing %s: %w", path, err)
	}
	return nil
}

// benchResult is the whole report; it is also the --json document.
type benchResult struct {
	RunID       string             `json:"run_id"`
	Server      benchServerInfo    `json:"server"`
	Config      benchConfig        `json:"config"`
	Send        *sendResult        `json:"send"`
	InitialSync *initialSyncResult `json:"initial_sync,omitempty"`
	Pagination  *paginationResult  `json:"pagination,omitempty"`
	Resources   resourceResult     `json:"resources"`
	Checks      []benchCheck       `json:"checks"`
	DurationSec float64            `json:"duration_seconds"`
}

type benchServerInfo struct {
	URL      string `json:"url"`
	Child    bool   `json:"child_process"`
	PID      int    `json:"pid,omitempty"`
	Database string `json:"database"`
	Version  string `json:"client_versions"`
	CPUs     int    `json:"client_cpus"`
	// Instances counts the child servers (1 unless --instances); the
	// others' URLs follow in MoreURLs.
	Instances int      `json:"instances,omitempty"`
	MoreURLs  []string `json:"more_urls,omitempty"`
}

type benchConfig struct {
	Senders           int `json:"senders"`
	Observers         int `json:"observers"`
	MessagesPerSender int `json:"messages_per_sender"`
	Rooms             int `json:"rooms"`
	RoomMessages      int `json:"room_messages"`
	Paginate          int `json:"paginate"`
	TimelineLimit     int `json:"observer_timeline_limit"`
}

// latencyStats summarises durations in milliseconds.
type latencyStats struct {
	Count  int     `json:"count"`
	MinMs  float64 `json:"min_ms"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	MaxMs  float64 `json:"max_ms"`
}

type observerResult struct {
	Received        int  `json:"received"`
	Missing         int  `json:"missing"`
	Duplicates      int  `json:"duplicates"`
	SameOrder       bool `json:"same_order_as_observer_0"`
	LimitedGaps     int  `json:"limited_gaps"`
	GapFilledEvents int  `json:"gap_filled_events"`
	Syncs           int  `json:"syncs"`
}

type sendResult struct {
	RoomID            id.RoomID        `json:"room_id"`
	Messages          int              `json:"messages"`
	WallSec           float64          `json:"wall_seconds"`
	Throughput        float64          `json:"throughput_msgs_per_sec"`
	SendRoundTrip     latencyStats     `json:"send_round_trip"`
	Delivery          latencyStats     `json:"delivery_latency"`
	NegativeDelivery  int              `json:"deliveries_before_send_returned"`
	Missing           int              `json:"missing"`
	Duplicates        int              `json:"duplicates"`
	SameOrder         bool             `json:"all_observers_same_order"`
	ObserversInOrder  int              `json:"observers_same_order"`
	LimitedGaps       int              `json:"limited_gaps"`
	DeliveryWaitSec   float64          `json:"delivery_wait_seconds"`
	Observers         []observerResult `json:"observers"`
	ReadChecks        int              `json:"read_checks"`
	ReadFailures      int              `json:"read_failures"`
	ReadFailureSample []string         `json:"read_failure_samples,omitempty"`
	ServerCPUSec      *float64         `json:"server_cpu_seconds"`
	CPUPerMessageMs   *float64         `json:"server_cpu_per_message_ms"`
	// ClientCPUSec is this bench process's own CPU time over the send
	// phase: it runs on the same cores as the server it measures.
	ClientCPUSec *float64 `json:"client_cpu_seconds,omitempty"`
}

type syncVariant struct {
	Filter     string       `json:"filter"`
	Latency    latencyStats `json:"latency"`
	Bytes      int          `json:"response_bytes"`
	RoomsSeen  int          `json:"rooms_seen"`
	EventsSeen int          `json:"timeline_events"`
	AllRooms   bool         `json:"all_rooms_present"`
}

type initialSyncResult struct {
	Rooms        int           `json:"rooms"`
	RoomMessages int           `json:"messages_per_room"`
	FillSec      float64       `json:"fill_seconds"`
	Variants     []syncVariant `json:"variants"`
}

type paginationResult struct {
	Messages        int          `json:"messages"`
	FillSec         float64      `json:"fill_seconds"`
	WallSec         float64      `json:"wall_seconds"`
	Pages           int          `json:"pages"`
	PerPage         latencyStats `json:"page_latency"`
	Returned        int          `json:"returned"`
	Missing         int          `json:"missing"`
	Duplicates      int          `json:"duplicates"`
	OrderViolations int          `json:"order_violations"`
	EndAbsent       bool         `json:"end_absent_at_start_of_room"`
	Correct         bool         `json:"correct"`
}

type resourceResult struct {
	Available bool     `json:"available"`
	RSSMB     *float64 `json:"rss_mb"`
	PeakRSSMB *float64 `json:"peak_rss_mb"`
	Note      string   `json:"note,omitempty"`
}

// benchCheck is one report line: a figure, its target and the verdict
// ("PASS", "FAIL", "N/A", or "" for figures without a target).
type benchCheck struct {
	Name   string `json:"name"`
	Value  string `json:"value"`
	Target string `json:"target,omitempty"`
	Result string `json:"result,omitempty"`
}

// benchRun holds the state of one run.
type benchRun struct {
	opts      *benchOptions
	progress  io.Writer
	runID     string
	baseURL   string
	transport *http.Transport
	server    *benchServer // nil with --url
	// more are the further instances of --instances on server's database
	// and data directory; senders and observers are spread over
	// server, more[0], more[1], ...
	more []*benchServer
}

// startMore starts the further instances of --instances: the same database
// and the first instance's data directory (its signing.key and media).
func (b *benchRun) startMore(ctx context.Context) error {
	for i := 1; i < b.opts.instances; i++ {
		b.logf("starting server child process %d of %d", i+1, b.opts.instances)
		srv, err := startBenchServer(ctx, b.opts.postgres, "DB_PATH="+filepath.Join(b.server.dir, "agentspace.db"))
		if err != nil {
			return err
		}
		b.more = append(b.more, srv)
	}
	return nil
}

// servers returns every child server (none with --url).
func (b *benchRun) servers() []*benchServer {
	if b.server == nil {
		return nil
	}
	return append([]*benchServer{b.server}, b.more...)
}

// spread points clients[i] at instance i mod the number of instances.
func (b *benchRun) spread(clients []*mautrix.Client) {
	if len(b.more) == 0 {
		return
	}
	srvs := b.servers()
	for i, cli := range clients {
		u, err := url.Parse(srvs[i%len(srvs)].url)
		if err != nil {
			panic(fmt.Sprintf("bench: invalid server URL %q: %v", srvs[i%len(srvs)].url, err))
		}
		cli.HomeserverURL = u
	}
}

func (b *benchRun) logf(format string, args ...any) {
	fmt.Fprintf(b.progress, "bench: "+format+"\n", args...)
}

func (b *benchRun) run(ctx context.Context) (_ *benchResult, err error) {
	began := time.Now()
	res := &benchResult{
		RunID: b.runID,
		Config: benchConfig{Senders: b.opts.senders, Observers: b.opts.observers, MessagesPerSender: b.opts.messages,
			Rooms: b.opts.rooms, RoomMessages: b.opts.roomMessages, Paginate: b.opts.paginate, TimelineLimit: b.opts.timeline},
	}
	res.Server.CPUs = runtime.NumCPU()
	if b.opts.url == "" {
		b.logf("starting server child process")
		srv, startErr := startBenchServer(ctx, b.opts.postgres)
		if startErr != nil {
			return nil, startErr
		}
		defer func() {
			// The measurements are complete by now: an unclean shutdown is
			// worth a warning, not the loss of the report.
			stopErr := srv.stop()
			if stopErr != nil {
				fmt.Fprintf(b.progress, "bench: warning: %v\n", stopErr)
			}
			if err != nil || stopErr != nil {
				if tail := srv.logs.String(); tail != "" {
					fmt.Fprintf(b.progress, "bench: server log (tail):\n%s\n", tail)
				}
			}
		}()
		b.server = srv
		b.baseURL = srv.url
		res.Server.Child, res.Server.PID, res.Server.Instances = true, srv.cmd.Process.Pid, 1
		if b.opts.instances > 1 {
			// Stopped before the first, whose stop removes the shared data directory.
			defer func() {
				for i := len(b.more) - 1; i >= 0; i-- {
					if stopErr := b.more[i].stop(); stopErr != nil {
						fmt.Fprintf(b.progress, "bench: warning: instance %d: %v\n", i+2, stopErr)
						if tail := b.more[i].logs.String(); tail != "" {
							fmt.Fprintf(b.progress, "bench: server log of instance %d (tail):\n%s\n", i+2, tail)
						}
					}
				}
			}()
			if err := b.startMore(ctx); err != nil {
				return nil, err
			}
			res.Server.Instances = len(b.servers())
			for _, m := range b.more {
				res.Server.MoreURLs = append(res.Server.MoreURLs, m.url)
			}
		}
		res.Server.Database = "SQLite"
		if b.opts.postgres != "" {
			res.Server.Database = "PostgreSQL"
		}
	} else {
		b.baseURL = strings.TrimRight(b.opts.url, "/")
		res.Server.Database = "unknown (external server)"
	}
	res.Server.URL = b.baseURL
	b.transport = &http.Transport{
		Proxy:               nil, // never route loopback traffic through a proxy
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        512,
		MaxIdleConnsPerHost: 512, // the default of 2 would make concurrent senders reconnect all the time
		IdleConnTimeout:     90 * time.Second,
	}
	defer b.transport.CloseIdleConnections()

	versions, err := b.newClient().Versions(ctx)
	if err != nil {
		return nil, fmt.Errorf("bench: GET /_matrix/client/versions: %w", err)
	}
	if n := len(versions.Versions); n > 0 {
		res.Server.Version = versions.Versions[n-1].String()
	}

	if res.Send, err = b.sendPhase(ctx); err != nil {
		return nil, err
	}
	if b.opts.rooms > 0 {
		if res.InitialSync, err = b.initialSyncPhase(ctx); err != nil {
			return nil, err
		}
	}
	if b.opts.paginate > 0 {
		if res.Pagination, err = b.paginationPhase(ctx); err != nil {
			return nil, err
		}
	}
	res.Resources = b.resources()
	res.DurationSec = time.Since(began).Seconds()
	res.Checks = benchChecks(res)
	return res, nil
}

// newClient returns an unauthenticated mautrix client sharing the bench's
// connection pool, with bounded timeouts and no automatic retries.
func (b *benchRun) newClient() *mautrix.Client {
	cli, err := mautrix.NewClient(b.baseURL, "", "")
	if err != nil {
		panic(fmt.Sprintf("bench: invalid base URL %q: %v", b.baseURL, err)) // validated in parseBenchFlags
	}
	cli.UserAgent = benchUserAgent
	// Long-polls last longPollMs; everything else is far quicker.
	cli.Client = &http.Client{Transport: b.transport, Timeout: longPollMs*time.Millisecond + 30*time.Second}
	cli.DefaultHTTPRetries = 0
	return cli
}

// registerUsers registers the given localparts with m.login.dummy and then
// logs each one in with its password, returning clients that use the login's
// access token.
func (b *benchRun) registerUsers(ctx context.Context, localparts []string) ([]*mautrix.Client, error) {
	clients := make([]*mautrix.Client, len(localparts))
	err := benchParallel(ctx, len(localparts), 8, func(ctx context.Context, i int) error {
		cli := b.newClient()
		password := benchRandomHex(16)
		_, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{
			Username: localparts[i], Password: password, InitialDeviceDisplayName: "bench registration",
		})
		if err != nil {
			return fmt.Errorf("bench: registering %s: %w", localparts[i], err)
		}
		_, err = cli.Login(ctx, &mautrix.ReqLogin{
			Type:                     mautrix.AuthTypePassword,
			Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localparts[i]},
			Password:                 password,
			InitialDeviceDisplayName: "bench",
			StoreCredentials:         true,
		})
		if err != nil {
			return fmt.Errorf("bench: logging in %s: %w", localparts[i], err)
		}
		clients[i] = cli
		return nil
	})
	return clients, err
}

func (b *benchRun) localparts(role string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("bench-%s-%s%d", b.runID, role, i)
	}
	return out
}

// benchContent is the body of every message the bench sends.
type benchContent struct {
	MsgType string `json:"msgtype"`
	Body    string `json:"body"`
}

// sendRecord is one completed PUT /send.
type sendRecord struct {
	eventID id.EventID
	worker  int
	start   time.Time
	ret     time.Time
}

// sendMessage sends one m.room.message with a transaction ID unique to the run.
func (b *benchRun) sendMessage(ctx context.Context, cli *mautrix.Client, room id.RoomID, txn, body string) (sendRecord, error) {
	start := time.Now()
	resp, err := cli.SendMessageEvent(ctx, room, event.EventMessage, &benchContent{MsgType: "m.text", Body: body},
		mautrix.ReqSendEvent{TransactionID: txn})
	ret := time.Now()
	if err != nil {
		return sendRecord{}, fmt.Errorf("bench: PUT /rooms/%s/send (%s): %w", room, cli.UserID, err)
	}
	if resp.EventID == "" {
		return sendRecord{}, fmt.Errorf("bench: PUT /rooms/%s/send (%s): response has no event_id", room, cli.UserID)
	}
	return sendRecord{eventID: resp.EventID, start: start, ret: ret}, nil
}

// fill sends n messages into room from cli using fillWorkers concurrent
// requests; worker w sends messages w, w+fillWorkers, ... in order.
func (b *benchRun) fill(ctx context.Context, cli *mautrix.Client, room id.RoomID, n int, tag string) ([]sendRecord, error) {
	records := make([]sendRecord, n)
	workers := min(fillWorkers, n)
	err := benchParallel(ctx, workers, workers, func(ctx context.Context, w int) error {
		for i := w; i < n; i += workers {
			rec, err := b.sendMessage(ctx, cli, room, fmt.Sprintf("%s-%s-%d", b.runID, tag, i), fmt.Sprintf("%s message %d", tag, i))
			if err != nil {
				return err
			}
			rec.worker = w
			records[i] = rec
		}
		return nil
	})
	return records, err
}

// ---------------------------------------------------------------------------
// Send phase: throughput, fan-out latency, ordering, read-your-writes.

func (b *benchRun) sendPhase(ctx context.Context) (*sendResult, error) {
	o := b.opts
	b.logf("registering %d senders and %d observers", o.senders, o.observers)
	senders, err := b.registerUsers(ctx, b.localparts("s", o.senders))
	if err != nil {
		return nil, err
	}
	observerClients, err := b.registerUsers(ctx, b.localparts("o", o.observers))
	if err != nil {
		return nil, err
	}
	// With --instances, sender i and observer i use instance i mod N.
	b.spread(senders)
	b.spread(observerClients)
	created, err := senders[0].CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "bench " + b.runID + " send"})
	if err != nil {
		return nil, fmt.Errorf("bench: POST /createRoom: %w", err)
	}
	room := created.RoomID
	joiners := append(slices.Clone(senders[1:]), observerClients...)
	if err := benchParallel(ctx, len(joiners), 8, func(ctx context.Context, i int) error {
		if _, err := joiners[i].JoinRoomByID(ctx, room); err != nil {
			return fmt.Errorf("bench: %s joining %s: %w", joiners[i].UserID, room, err)
		}
		return nil
	}); err != nil {
		return nil, err
	}

	total := o.senders * o.messages
	filter := fmt.Sprintf(`{"room":{"timeline":{"limit":%d},"state":{"lazy_load_members":true}}}`, o.timeline)
	observers := make([]*benchObserver, o.observers)
	if err := benchParallel(ctx, o.observers, 8, func(ctx context.Context, i int) error {
		cli := observerClients[i]
		resp, err := cli.FullSyncRequest(ctx, mautrix.ReqSync{Timeout: 0, FilterID: filter})
		if err != nil {
			return fmt.Errorf("bench: initial /sync of observer %s: %w", cli.UserID, err)
		}
		if _, ok := resp.Rooms.Join[room]; !ok {
			return fmt.Errorf("bench: initial /sync of observer %s does not list joined room %s", cli.UserID, room)
		}
		observers[i] = &benchObserver{cli: cli, room: room, filter: filter, since: resp.NextBatch, expect: total,
			recv: make(map[id.EventID]time.Time, total), complete: make(chan struct{})}
		return nil
	}); err != nil {
		return nil, err
	}

	// Observers long-poll until they hold every message or are cancelled.
	obsCtx, obsCancel := context.WithCancel(ctx)
	defer obsCancel()
	obsErr := make(chan error, len(observers))
	var obsWG sync.WaitGroup
	for _, ob := range observers {
		obsWG.Go(func() {
			if err := ob.run(obsCtx); err != nil {
				obsErr <- err
				obsCancel()
			}
		})
	}
	// Give the first long-polls time to reach the server, so early messages
	// are delivered by wake-up rather than by an immediate return.
	select {
	case <-time.After(observerStartWait):
	case <-ctx.Done():
		return nil, ctx.Err()
	}

	b.logf("send phase: %d senders × %d messages, %d observers", o.senders, o.messages, o.observers)
	cpuBefore, cpuOK := b.serverCPU()
	clientBefore, clientOK := processCPU(os.Getpid())
	records := make([][]sendRecord, o.senders)
	var readChecks, readFailures atomic.Int64
	var failMu sync.Mutex
	var failSamples []string
	start := time.Now()
	err = benchParallel(obsCtx, o.senders, o.senders, func(ctx context.Context, s int) error {
		cli := senders[s]
		recs := make([]sendRecord, 0, o.messages)
		for m := 0; m < o.messages; m++ {
			rec, err := b.sendMessage(ctx, cli, room, fmt.Sprintf("%s-send-%d-%d", b.runID, s, m), fmt.Sprintf("bench message %d from sender %d", m, s))
			if err != nil {
				return err
			}
			rec.worker = s
			recs = append(recs, rec)
			if (s*o.messages+m)%readCheckEvery == 0 {
				readChecks.Add(1)
				if err := benchCheckReadable(ctx, cli, room, rec.eventID); err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					readFailures.Add(1)
					failMu.Lock()
					if len(failSamples) < 5 {
						failSamples = append(failSamples, err.Error())
					}
					failMu.Unlock()
				}
			}
		}
		records[s] = recs
		return nil
	})
	sendEnd := time.Now()
	if err != nil {
		obsCancel()
		obsWG.Wait()
		select {
		case oerr := <-obsErr:
			return nil, oerr // the observer failure is what cancelled the senders
		default:
		}
		return nil, err
	}

	// Wait for delivery to every observer (bounded).
	grace := time.NewTimer(deliveryGrace)
	defer grace.Stop()
wait:
	for _, ob := range observers {
		select {
		case <-ob.complete:
		case err := <-obsErr:
			obsCancel()
			obsWG.Wait()
			return nil, err
		case <-grace.C:
			break wait
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	deliveredAt := time.Now()
	cpuAfter, cpuAfterOK := b.serverCPU()
	clientAfter, clientAfterOK := processCPU(os.Getpid())
	obsCancel()
	obsWG.Wait()
	select {
	case err := <-obsErr:
		return nil, err
	default:
	}

	res := &sendResult{RoomID: room, Messages: total, WallSec: sendEnd.Sub(start).Seconds(),
		DeliveryWaitSec: deliveredAt.Sub(sendEnd).Seconds(),
		ReadChecks:      int(readChecks.Load()), ReadFailures: int(readFailures.Load()), ReadFailureSample: failSamples}
	res.Throughput = float64(total) / res.WallSec
	if cpuOK && cpuAfterOK {
		cpu := (cpuAfter - cpuBefore).Seconds()
		perMsg := cpu * 1000 / float64(total)
		res.ServerCPUSec, res.CPUPerMessageMs = &cpu, &perMsg
	}
	if clientOK && clientAfterOK {
		cpu := (clientAfter - clientBefore).Seconds()
		res.ClientCPUSec = &cpu
	}
	sent := make(map[id.EventID]time.Time, total)
	var roundTrips []time.Duration
	for _, recs := range records {
		for _, r := range recs {
			sent[r.eventID] = r.ret
			roundTrips = append(roundTrips, r.ret.Sub(r.start))
		}
	}
	res.SendRoundTrip = benchSummarize(roundTrips)
	if len(sent) != total {
		return nil, fmt.Errorf("bench: %d sends returned only %d distinct event IDs", total, len(sent))
	}
	var delivery []time.Duration
	var reference []id.EventID
	res.SameOrder = true
	for i, ob := range observers {
		var order []id.EventID
		for _, eid := range ob.order {
			ret, ok := sent[eid]
			if !ok {
				continue // not one of ours
			}
			order = append(order, eid)
			d := ob.recv[eid].Sub(ret)
			if d < 0 {
				res.NegativeDelivery++
			}
			delivery = append(delivery, d)
		}
		if i == 0 {
			reference = order
		}
		or := observerResult{Received: len(order), Missing: total - len(order), Duplicates: ob.dups,
			SameOrder: slices.Equal(order, reference), LimitedGaps: ob.gaps, GapFilledEvents: ob.gapEvents, Syncs: ob.syncs}
		res.Missing += or.Missing
		res.Duplicates += or.Duplicates
		res.LimitedGaps += or.LimitedGaps
		if or.SameOrder {
			res.ObserversInOrder++
		} else {
			res.SameOrder = false
		}
		res.Observers = append(res.Observers, or)
	}
	res.Delivery = benchSummarize(delivery)
	return res, nil
}

// benchObserver is one long-polling /sync client of the send phase.
type benchObserver struct {
	cli    *mautrix.Client
	room   id.RoomID
	filter string
	since  string
	expect int

	// Written only by run; read after run has returned.
	recv      map[id.EventID]time.Time
	order     []id.EventID
	dups      int
	gaps      int
	gapEvents int
	syncs     int
	complete  chan struct{}
}

// run long-polls /sync until it has seen expect messages (then closes
// complete) or ctx ends. Only request failures are errors.
func (ob *benchObserver) run(ctx context.Context) error {
	for len(ob.recv) < ob.expect {
		var resp benchSyncResponse
		_, err := ob.cli.MakeFullRequest(ctx, mautrix.FullRequest{
			Method:       http.MethodGet,
			URL:          ob.cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, (&mautrix.ReqSync{Timeout: longPollMs, Since: ob.since, FilterID: ob.filter}).BuildQuery()),
			ResponseJSON: &resp,
			MaxAttempts:  1,
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("bench: /sync of observer %s: %w", ob.cli.UserID, err)
		}
		now := time.Now()
		ob.syncs++
		if jr, ok := resp.Rooms.Join[ob.room]; ok {
			events := jr.Timeline.Events
			if jr.Timeline.Limited {
				// The server skipped events between since and prev_batch:
				// a client must fetch them with /messages or lose them.
				gap, err := ob.fillGap(ctx, jr.Timeline.PrevBatch)
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				ob.gaps++
				ob.gapEvents += len(gap)
				now = time.Now()
				events = append(gap, events...)
			}
			for _, evt := range events {
				ob.take(evt.Type, evt.ID, now)
			}
		}
		if resp.NextBatch == "" {
			return fmt.Errorf("bench: /sync of observer %s returned no next_batch", ob.cli.UserID)
		}
		ob.since = resp.NextBatch
	}
	close(ob.complete)
	return nil
}

func (ob *benchObserver) take(evType string, eventID id.EventID, at time.Time) {
	if evType != event.EventMessage.Type {
		return
	}
	if _, seen := ob.recv[eventID]; seen {
		ob.dups++
		return
	}
	ob.recv[eventID] = at
	ob.order = append(ob.order, eventID)
}

// benchSyncResponse is the part of a /sync response the send phase's
// observers check. The bench client shares the machine's cores with the
// server it measures; decoding whole events (content, unsigned, typed
// fields) into mautrix's structures cost it as much CPU as the server
// spent, so it reads only what it checks. The whole body is still parsed
// as JSON, and a malformed one fails the run.
type benchSyncResponse struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[id.RoomID]struct {
			Timeline struct {
				Events    []benchSyncEvent `json:"events"`
				Limited   bool             `json:"limited"`
				PrevBatch string           `json:"prev_batch"`
			} `json:"timeline"`
		} `json:"join"`
	} `json:"rooms"`
}

type benchSyncEvent struct {
	ID   id.EventID `json:"event_id"`
	Type string     `json:"type"`
}

// fillGap pages back from prevBatch to the previous sync position (or to an
// event already seen) and returns the skipped events oldest first.
func (ob *benchObserver) fillGap(ctx context.Context, prevBatch string) ([]benchSyncEvent, error) {
	if prevBatch == "" {
		return nil, fmt.Errorf("bench: /sync of observer %s: limited timeline without prev_batch", ob.cli.UserID)
	}
	var back []benchSyncEvent
	from := prevBatch
	for page := 0; ; page++ {
		if page > ob.expect/paginationLimit+10 {
			return nil, fmt.Errorf("bench: observer %s: gap back-fill did not end after %d pages", ob.cli.UserID, page)
		}
		resp, err := ob.cli.Messages(ctx, ob.room, from, ob.since, mautrix.DirectionBackward, nil, paginationLimit)
		if err != nil {
			return nil, fmt.Errorf("bench: observer %s filling a limited timeline with /messages: %w", ob.cli.UserID, err)
		}
		reached := false
		for _, evt := range resp.Chunk {
			if _, seen := ob.recv[evt.ID]; seen {
				reached = true
				break
			}
			back = append(back, benchSyncEvent{ID: evt.ID, Type: evt.Type.Type})
		}
		if reached || resp.End == "" || len(resp.Chunk) == 0 {
			break
		}
		from = resp.End
	}
	slices.Reverse(back)
	return back, nil
}

// benchCheckReadable verifies that an event is visible through GET /event and
// GET /messages right after its send returned.
func benchCheckReadable(ctx context.Context, cli *mautrix.Client, room id.RoomID, eventID id.EventID) error {
	evt, err := cli.GetEvent(ctx, room, eventID)
	if err != nil {
		return fmt.Errorf("GET /rooms/%s/event/%s: %w", room, eventID, err)
	}
	if evt.ID != eventID {
		return fmt.Errorf("GET /rooms/%s/event/%s returned event %s", room, eventID, evt.ID)
	}
	// Each sender sends sequentially, so its newest event must be this one.
	mine, err := cli.Messages(ctx, room, "", "", mautrix.DirectionBackward, &mautrix.FilterPart{Senders: []id.UserID{cli.UserID}}, 1)
	if err != nil {
		return fmt.Errorf("GET /rooms/%s/messages?dir=b&limit=1: %w", room, err)
	}
	if len(mine.Chunk) > 0 && mine.Chunk[0].ID == eventID {
		return nil
	}
	// A server that ignores the senders filter returns whichever message is
	// newest; look a little further back before calling it a failure.
	recent, err := cli.Messages(ctx, room, "", "", mautrix.DirectionBackward, nil, paginationLimit)
	if err != nil {
		return fmt.Errorf("GET /rooms/%s/messages?dir=b&limit=%d: %w", room, paginationLimit, err)
	}
	for _, e := range recent.Chunk {
		if e.ID == eventID {
			return nil
		}
	}
	return fmt.Errorf("event %s is not in GET /rooms/%s/messages?dir=b right after its send returned", eventID, room)
}

// ---------------------------------------------------------------------------
// Initial sync of a user in many rooms.

func (b *benchRun) initialSyncPhase(ctx context.Context) (*initialSyncResult, error) {
	o := b.opts
	clients, err := b.registerUsers(ctx, []string{fmt.Sprintf("bench-%s-initial", b.runID)})
	if err != nil {
		return nil, err
	}
	cli := clients[0]
	b.logf("initial sync: filling %d rooms × %d messages", o.rooms, o.roomMessages)
	roomIDs := make([]id.RoomID, o.rooms)
	fillStart := time.Now()
	if err := benchParallel(ctx, o.rooms, fillWorkers, func(ctx context.Context, r int) error {
		created, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: fmt.Sprintf("bench %s room %d", b.runID, r)})
		if err != nil {
			return fmt.Errorf("bench: POST /createRoom: %w", err)
		}
		roomIDs[r] = created.RoomID
		return nil
	}); err != nil {
		return nil, err
	}
	jobs := o.rooms * o.roomMessages
	if err := benchParallel(ctx, jobs, fillWorkers, func(ctx context.Context, j int) error {
		r, m := j%o.rooms, j/o.rooms
		_, err := b.sendMessage(ctx, cli, roomIDs[r], fmt.Sprintf("%s-fill-%d-%d", b.runID, r, m), fmt.Sprintf("room %d message %d", r, m))
		return err
	}); err != nil {
		return nil, err
	}
	res := &initialSyncResult{Rooms: o.rooms, RoomMessages: o.roomMessages, FillSec: time.Since(fillStart).Seconds()}

	b.logf("initial sync: %d timed runs per filter", initialSyncRuns)
	for _, filter := range []string{"", `{"room":{"timeline":{"limit":20}}}`} {
		query := map[string]string{"timeout": "0"}
		if filter != "" {
			query["filter"] = filter
		}
		u := cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "sync"}, query)
		v := syncVariant{Filter: filter, AllRooms: true}
		if filter == "" {
			v.Filter = "(none: server default)"
		}
		var times []time.Duration
		for run := 0; run < initialSyncRuns; run++ {
			var resp mautrix.RespSync
			start := time.Now()
			body, err := cli.MakeFullRequest(ctx, mautrix.FullRequest{Method: http.MethodGet, URL: u, ResponseJSON: &resp, MaxAttempts: 1})
			times = append(times, time.Since(start))
			if err != nil {
				return nil, fmt.Errorf("bench: initial GET /sync (filter %s): %w", v.Filter, err)
			}
			v.Bytes = len(body)
			v.RoomsSeen, v.EventsSeen = 0, 0
			for _, rid := range roomIDs {
				jr := resp.Rooms.Join[rid]
				if jr == nil || len(jr.Timeline.Events) == 0 {
					v.AllRooms = false
					continue
				}
				v.RoomsSeen++
				v.EventsSeen += len(jr.Timeline.Events)
			}
		}
		v.Latency = benchSummarize(times)
		res.Variants = append(res.Variants, v)
	}
	return res, nil
}

// ---------------------------------------------------------------------------
// Backward pagination through one long room.

func (b *benchRun) paginationPhase(ctx context.Context) (*paginationResult, error) {
	n := b.opts.paginate
	clients, err := b.registerUsers(ctx, []string{fmt.Sprintf("bench-%s-pager", b.runID)})
	if err != nil {
		return nil, err
	}
	cli := clients[0]
	created, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "bench " + b.runID + " history"})
	if err != nil {
		return nil, fmt.Errorf("bench: POST /createRoom: %w", err)
	}
	room := created.RoomID
	b.logf("pagination: filling one room with %d messages", n)
	fillStart := time.Now()
	records, err := b.fill(ctx, cli, room, n, "page")
	if err != nil {
		return nil, err
	}
	res := &paginationResult{Messages: n, FillSec: time.Since(fillStart).Seconds()}
	index := make(map[id.EventID]int, n)
	for i, r := range records {
		index[r.eventID] = i
	}

	b.logf("pagination: paging back with limit %d", paginationLimit)
	var got []int // indexes into records, newest first
	seen := make(map[int]bool, n)
	var pageTimes []time.Duration
	from := ""
	start := time.Now()
	for {
		if res.Pages > n/paginationLimit+50 {
			return nil, fmt.Errorf("bench: /messages pagination did not end after %d pages", res.Pages)
		}
		pageStart := time.Now()
		resp, err := cli.Messages(ctx, room, from, "", mautrix.DirectionBackward, nil, paginationLimit)
		pageTimes = append(pageTimes, time.Since(pageStart))
		if err != nil {
			return nil, fmt.Errorf("bench: GET /rooms/%s/messages?dir=b (page %d): %w", room, res.Pages+1, err)
		}
		res.Pages++
		for _, evt := range resp.Chunk {
			i, ok := index[evt.ID]
			if !ok {
				continue // room creation events
			}
			if seen[i] {
				res.Duplicates++
				continue
			}
			seen[i] = true
			got = append(got, i)
		}
		if resp.End == "" {
			res.EndAbsent = true
			break
		}
		if len(resp.Chunk) == 0 {
			break // end given on an empty page: stop anyway, but it is reported
		}
		from = resp.End
	}
	res.WallSec = time.Since(start).Seconds()
	res.PerPage = benchSummarize(pageTimes)
	res.Returned = len(got)
	res.Missing = n - len(got)
	res.OrderViolations = benchOrderViolations(records, got)
	res.Correct = res.Missing == 0 && res.Duplicates == 0 && res.OrderViolations == 0 && res.EndAbsent
	return res, nil
}

// benchOrderViolations counts pairs that contradict send order in a newest-first
// listing: a message whose send returned before another's send started must
// be listed after it, and each worker's own messages must be newest first.
func benchOrderViolations(records []sendRecord, newestFirst []int) int {
	bad := 0
	for a := 0; a < len(newestFirst); a++ {
		ra := records[newestFirst[a]]
		for c := a + 1; c < len(newestFirst); c++ {
			rc := records[newestFirst[c]]
			// rc is listed as older than ra.
			if ra.ret.Before(rc.start) || (ra.worker == rc.worker && newestFirst[a] < newestFirst[c]) {
				bad++
			}
		}
	}
	return bad
}

// ---------------------------------------------------------------------------
// Server process: start, stop, CPU and memory.

// benchServer is the server running as a child process.
type benchServer struct {
	cmd      *exec.Cmd
	dir      string
	url      string
	logs     *benchTail
	exited   chan struct{}
	waitErr  error
	stopOnce sync.Once
	stopErr  error
}

// startBenchServer runs this binary's "serve" on a free loopback port with a
// temporary database directory and waits until it answers /versions.
func startBenchServer(ctx context.Context, postgresURL string, extraEnv ...string) (*benchServer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("bench: locating the agentspace binary: %w", err)
	}
	dir, err := os.MkdirTemp("", "agentspace-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: creating temp dir: %w", err)
	}
	port, err := benchFreePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	env := map[string]string{
		"PORT":                strconv.Itoa(port),
		"BIND_ADDRESS":        "127.0.0.1",
		"DB_PATH":             filepath.Join(dir, "agentspace.db"),
		"ENABLE_REGISTRATION": "true",
		"RATE_LIMIT":          "off",
		"LOG_LEVEL":           "warn",
		"BCRYPT_COST":         "4",
	}
	if postgresURL != "" {
		env["DATABASE_URL"] = postgresURL
	}
	for _, kv := range extraEnv {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	s := &benchServer{dir: dir, url: fmt.Sprintf("http://127.0.0.1:%d", port), logs: &benchTail{max: 16 << 10}, exited: make(chan struct{})}
	s.cmd = exec.Command(exe, "serve")
	s.cmd.Env = benchServerEnv(os.Environ(), env)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: starting %s serve: %w", exe, err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()
	if err := s.waitReady(ctx, 30*time.Second); err != nil {
		_ = s.stop()
		return nil, err
	}
	return s, nil
}

// benchServerEnv is the parent environment without any of the server's own
// configuration variables (so a stray SERVER_NAME or DATABASE_URL cannot leak
// in), plus set.
func benchServerEnv(parent []string, set map[string]string) []string {
	own := make(map[string]bool, len(config.EnvVars))
	for _, v := range config.EnvVars {
		own[v.Name] = true
	}
	out := make([]string, 0, len(parent)+len(set))
	for _, kv := range parent {
		name, _, _ := strings.Cut(kv, "=")
		if !own[name] {
			out = append(out, kv)
		}
	}
	for k, v := range set {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

func (s *benchServer) waitReady(ctx context.Context, limit time.Duration) error {
	probe := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	deadline := time.Now().Add(limit)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"/_matrix/client/versions", nil)
		if err != nil {
			return fmt.Errorf("bench: building readiness probe: %w", err)
		}
		if resp, err := probe.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.exited:
			return fmt.Errorf("bench: server exited before becoming ready (%v)", s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("bench: waiting for the server: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: server at %s not ready after %s", s.url, limit)
		}
	}
}

// stop sends SIGTERM, waits up to 15 s (then kills) and removes the temp dir.
// A non-zero exit after SIGTERM is reported as an error.
func (s *benchServer) stop() error {
	s.stopOnce.Do(func() {
		defer os.RemoveAll(s.dir)
		select {
		case <-s.exited:
			s.stopErr = fmt.Errorf("bench: server exited unexpectedly (%v)", s.waitErr)
			return
		default:
		}
		if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			s.stopErr = fmt.Errorf("bench: signalling the server: %w", err)
		}
		select {
		case <-s.exited:
			if s.waitErr != nil && s.stopErr == nil {
				s.stopErr = fmt.Errorf("bench: server shutdown: %w", s.waitErr)
			}
		case <-time.After(15 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
			s.stopErr = errors.New("bench: server did not stop within 15 s of SIGTERM; killed")
		}
	})
	return s.stopErr
}

// serverCPU returns the user+system CPU time of the child (the sum over all
// of them with --instances); false with --url or when /proc is unavailable.
func (b *benchRun) serverCPU() (time.Duration, bool) {
	if b.server == nil {
		return 0, false
	}
	var sum time.Duration
	for _, srv := range b.servers() {
		d, ok := processCPU(srv.cmd.Process.Pid)
		if !ok {
			return 0, false
		}
		sum += d
	}
	return sum, true
}

// processCPU returns a process's user+system CPU time from /proc.
func processCPU(pid int) (time.Duration, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// Fields after "(comm)": state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(utime+stime) * time.Second / time.Duration(benchClockTicks()), true
}

var benchClockTicks = sync.OnceValue(func() int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "getconf", "CLK_TCK").Output(); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && v > 0 {
			return v
		}
	}
	return 100 // USER_HZ on every Linux architecture Go supports
})

// resources reads the child's memory; with --instances, that of the
// instance with the highest peak.
func (b *benchRun) resources() resourceResult {
	if b.server == nil {
		return resourceResult{Note: "server is not a child process (--url): CPU and memory unavailable"}
	}
	res := processResources(b.server.cmd.Process.Pid)
	if len(b.more) == 0 || !res.Available {
		return res
	}
	for _, m := range b.more {
		r := processResources(m.cmd.Process.Pid)
		if !r.Available {
			return r
		}
		if *r.PeakRSSMB > *res.PeakRSSMB {
			res = r
		}
	}
	res.Note = fmt.Sprintf("RSS is that of the instance with the highest peak (of %d)", len(b.servers()))
	return res
}

// processResources reads a process's current and peak RSS from /proc.
func processResources(pid int) resourceResult {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return resourceResult{Note: "reading /proc status: " + err.Error()}
	}
	res := resourceResult{Available: true}
	for _, line := range strings.Split(string(data), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		kb, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		mb := kb / 1024
		if name == "VmRSS" {
			res.RSSMB = &mb
		} else {
			res.PeakRSSMB = &mb
		}
	}
	if res.RSSMB == nil || res.PeakRSSMB == nil {
		res.Available = false
		res.Note = "VmRSS/VmHWM missing from /proc status"
	}
	return res
}

// benchFreePort asks the kernel for a free loopback port and releases it.
func benchFreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("bench: finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// benchTail keeps the last max bytes written to it; safe for concurrent use.
type benchTail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *benchTail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *benchTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// ---------------------------------------------------------------------------
// Helpers and report.

// benchParallel runs fn(i) for every i in [0,n) on up to workers goroutines. The
// first error cancels the context passed to the others and is returned.
func benchParallel(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	inner, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || inner.Err() != nil {
					return
				}
				if err := fn(inner, i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

func benchSummarize(ds []time.Duration) latencyStats {
	if len(ds) == 0 {
		return latencyStats{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	// Nearest-rank percentile.
	pct := func(p float64) float64 {
		k := int(float64(len(s))*p+0.999999) - 1
		return ms(s[max(0, min(k, len(s)-1))])
	}
	return latencyStats{Count: len(s), MinMs: ms(s[0]), MeanMs: ms(sum) / float64(len(s)),
		P50Ms: pct(0.50), P90Ms: pct(0.90), P99Ms: pct(0.99), MaxMs: ms(s[len(s)-1])}
}

func benchRandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}

func benchVerdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// benchChecks turns the measurements into report lines.
func benchChecks(r *benchResult) []benchCheck {
	var c []benchCheck
	add := func(name, value, target, result string) {
		c = append(c, benchCheck{Name: name, Value: value, Target: target, Result: result})
	}
	s := r.Send
	add("send throughput", fmt.Sprintf("%.0f msg/s (%d in %.2f s)", s.Throughput, s.Messages, s.WallSec),
		fmt.Sprintf(">= %.0f msg/s", targetThroughput), benchVerdict(s.Throughput >= targetThroughput))
	add("PUT /send round trip p50 / p99", fmt.Sprintf("%.2f / %.2f ms", s.SendRoundTrip.P50Ms, s.SendRoundTrip.P99Ms), "", "")
	if s.CPUPerMessageMs != nil {
		add("server CPU per message", fmt.Sprintf("%.3f ms (%.2f s CPU)", *s.CPUPerMessageMs, *s.ServerCPUSec),
			fmt.Sprintf("<= %.0f ms", targetCPUPerMessage), benchVerdict(*s.CPUPerMessageMs <= targetCPUPerMessage))
	} else {
		add("server CPU per message", "unavailable", fmt.Sprintf("<= %.0f ms", targetCPUPerMessage), "N/A")
	}
	if s.ClientCPUSec != nil {
		add("bench client CPU (same cores)", fmt.Sprintf("%.2f s over %.2f s", *s.ClientCPUSec, s.WallSec+s.DeliveryWaitSec), "", "")
	}
	add("fan-out latency p50 / p90", fmt.Sprintf("%.2f / %.2f ms", s.Delivery.P50Ms, s.Delivery.P90Ms), "", "")
	add("fan-out latency p99", fmt.Sprintf("%.2f ms", s.Delivery.P99Ms), fmt.Sprintf("<= %.0f ms", targetFanoutP99),
		benchVerdict(s.Delivery.Count > 0 && s.Delivery.P99Ms <= targetFanoutP99))
	add("fan-out latency max", fmt.Sprintf("%.2f ms (%d pairs, %d before send returned)", s.Delivery.MaxMs, s.Delivery.Count, s.NegativeDelivery), "", "")
	add("observers: missing / duplicates", fmt.Sprintf("%d / %d", s.Missing, s.Duplicates), "0 / 0", benchVerdict(s.Missing == 0 && s.Duplicates == 0))
	add("observers: same order", fmt.Sprintf("%d of %d", s.ObserversInOrder, len(s.Observers)), "all", benchVerdict(s.SameOrder))
	add("observers: limited timelines back-filled", strconv.Itoa(s.LimitedGaps), "", "")
	add("readable when send returns", fmt.Sprintf("%d of %d checks", s.ReadChecks-s.ReadFailures, s.ReadChecks), "all", benchVerdict(s.ReadFailures == 0))
	if is := r.InitialSync; is != nil {
		for _, v := range is.Variants {
			name := "initial sync, default filter"
			if !strings.HasPrefix(v.Filter, "(") {
				name = "initial sync, timeline limit 20"
			}
			add(fmt.Sprintf("%s (%d×%d) p50 / p99", name, is.Rooms, is.RoomMessages),
				fmt.Sprintf("%.1f / %.1f ms, %d KB, %d events", v.Latency.P50Ms, v.Latency.P99Ms, v.Bytes/1024, v.EventsSeen), "", "")
			add(name+": all rooms present", fmt.Sprintf("%d of %d", v.RoomsSeen, is.Rooms), "all", benchVerdict(v.AllRooms))
		}
	}
	if p := r.Pagination; p != nil {
		add(fmt.Sprintf("back-paginate %d messages", p.Messages),
			fmt.Sprintf("%.0f ms, %d pages, page p50 / p99 %.1f / %.1f ms", p.WallSec*1000, p.Pages, p.PerPage.P50Ms, p.PerPage.P99Ms), "", "")
		add("pagination: all once, reverse send order",
			fmt.Sprintf("%d returned, %d missing, %d dup, %d out of order, end absent: %v", p.Returned, p.Missing, p.Duplicates, p.OrderViolations, p.EndAbsent),
			"all", benchVerdict(p.Correct))
	}
	res := r.Resources
	if res.Available {
		add("server RSS now / peak", fmt.Sprintf("%.1f / %.1f MB", *res.RSSMB, *res.PeakRSSMB), fmt.Sprintf("<= %.0f MB", targetRSSMB),
			benchVerdict(*res.PeakRSSMB <= targetRSSMB))
	} else {
		add("server RSS now / peak", "unavailable", fmt.Sprintf("<= %.0f MB", targetRSSMB), "N/A")
	}
	return c
}

func writeBenchReport(w io.Writer, r *benchResult) {
	where := "external server"
	if r.Server.Child {
		where = fmt.Sprintf("child process pid %d", r.Server.PID)
	}
	if len(r.Server.MoreURLs) > 0 {
		where = fmt.Sprintf("%d child processes, also %s; senders and observers split, CPU summed", r.Server.Instances, strings.Join(r.Server.MoreURLs, ", "))
	}
	fmt.Fprintf(w, "AgentSpace bench %s: %s (%s, %s), client on %d CPUs, %s\n",
		r.RunID, r.Server.URL, where, r.Server.Database, r.Server.CPUs, runtime.Version())
	fmt.Fprintf(w, "send phase: %d senders × %d messages into one room, %d long-polling observers (timeline limit %d)\n\n",
		r.Config.Senders, r.Config.MessagesPerSender, r.Config.Observers, r.Config.TimelineLimit)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tVALUE\tTARGET\tRESULT")
	for _, c := range r.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, c.Value, c.Target, c.Result)
	}
	_ = tw.Flush()
	pass, fail := 0, 0
	for _, c := range r.Checks {
		switch c.Result {
		case "PASS":
			pass++
		case "FAIL":
			fail++
		}
	}
	fmt.Fprintf(w, "\n%d passed, %d failed, total run time %.1f s\n", pass, fail, r.DurationSec)
	for _, f := range r.Send.ReadFailureSample {
		fmt.Fprintf(w, "read failure: %s\n", f)
	}
	if r.Resources.Note != "" {
		fmt.Fprintf(w, "note: %s\n", r.Resources.Note)
	}
}
