package main

// bench_soak.go implements "agentspace bench soak": a long-running load of
// bots sending at a steady rate and observers long-polling /sync, sampled
// every --interval (server RSS, Go heap, goroutines, CPU, send latency,
// send→sync delivery latency, errors), ending with a verdict on memory
// growth after the warm-up, errors and lost messages. It is not part of
// "go test"; bench_soak_test.go runs a 20-second version of it.

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
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
)

// soakOptions are the flags of "agentspace bench soak".
type soakOptions struct {
	duration    time.Duration
	interval    time.Duration
	warmup      time.Duration
	bots        int
	observers   int
	rooms       int
	rate        float64
	timeline    int
	maxGrowthMB float64
	jsonPath    string
	postgres    string
}

func parseSoakFlags(args []string, stderr io.Writer) (*soakOptions, error) {
	o := &soakOptions{}
	fs := flag.NewFlagSet("bench soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.duration, "duration", 30*time.Minute, "how long the bots send")
	fs.DurationVar(&o.interval, "interval", time.Minute, "sampling interval of the time series")
	fs.DurationVar(&o.warmup, "warmup", 5*time.Minute, "memory growth is measured from the sample at this point to the end (capped at half of --duration)")
	fs.IntVar(&o.bots, "bots", 50, "sending bots")
	fs.IntVar(&o.observers, "observers", 50, "long-polling /sync observers")
	fs.IntVar(&o.rooms, "rooms", 5, "rooms; bot i sends into and observer i watches room i mod --rooms")
	fs.Float64Var(&o.rate, "rate", 2, "messages per second per bot")
	fs.IntVar(&o.timeline, "timeline-limit", 100, "timeline limit in the observers' /sync filter (limited timelines are back-filled)")
	fs.Float64Var(&o.maxGrowthMB, "max-growth-mb", 10, "allowed RSS and heap growth after the warm-up")
	fs.StringVar(&o.jsonPath, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&o.postgres, "postgres", "", "postgres:// URL for the child server (default: SQLite in a temp dir)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: agentspace bench soak [flags]\n\nRuns a child server under a steady load of --bots senders and --observers\nlong-polling /sync clients for --duration, samples memory, goroutines and\nlatencies every --interval and reports growth, errors and p99s.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("bench soak: unexpected argument %q", fs.Arg(0))
	}
	var problems []string
	if o.duration <= 0 || o.interval <= 0 || o.warmup < 0 {
		problems = append(problems, "--duration and --interval must be positive, --warmup not negative")
	}
	if o.bots < 1 || o.observers < 0 || o.rooms < 1 || o.timeline < 1 {
		problems = append(problems, "--bots, --rooms and --timeline-limit must be at least 1, --observers not negative")
	}
	if o.rate <= 0 || math.IsInf(o.rate, 0) || math.IsNaN(o.rate) {
		problems = append(problems, "--rate must be a positive number")
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("bench soak: %s", strings.Join(problems, "; "))
	}
	return o, nil
}

// soakSample is one point of the time series; each figure covers the
// interval that ends at ElapsedSec, the resources are read at that moment.
type soakSample struct {
	ElapsedSec   float64      `json:"elapsed_seconds"`
	RSSMB        float64      `json:"rss_mb"`
	HeapInuseMB  float64      `json:"heap_inuse_mb"`
	Goroutines   int          `json:"goroutines"`
	CPUPercent   float64      `json:"server_cpu_percent"`
	Sent         int          `json:"sent"`
	Delivered    int          `json:"delivered"`
	Errors       int          `json:"errors"`
	Send         latencyStats `json:"send"`
	Delivery     latencyStats `json:"delivery"`
	LimitedSyncs int          `json:"limited_syncs"`
}

// soakResult is the whole report; it is also the --json document.
type soakResult struct {
	RunID        string       `json:"run_id"`
	Database     string       `json:"database"`
	Bots         int          `json:"bots"`
	Observers    int          `json:"observers"`
	Rooms        int          `json:"rooms"`
	RatePerBot   float64      `json:"rate_per_bot"`
	DurationSec  float64      `json:"duration_seconds"`
	Samples      []soakSample `json:"samples"`
	Sent         int          `json:"sent"`
	Delivered    int          `json:"delivered"`
	Errors       int          `json:"errors"`
	ErrorSamples []string     `json:"error_samples,omitempty"`
	Missing      int          `json:"missing"`
	Duplicates   int          `json:"duplicates"`
	Send         latencyStats `json:"send"`     // p50/p99 are the worst interval's
	Delivery     latencyStats `json:"delivery"` // p50/p99 are the worst interval's
	Growth       soakGrowth   `json:"growth"`
	Checks       []benchCheck `json:"checks"`
}

// soakGrowth compares the sample at the end of the warm-up with the last.
type soakGrowth struct {
	FromSec        float64 `json:"from_seconds"`
	RSSMB          float64 `json:"rss_mb"`
	HeapInuseMB    float64 `json:"heap_inuse_mb"`
	Goroutines     int     `json:"goroutines"`
	RSSSlopeMBPerH float64 `json:"rss_slope_mb_per_hour"`
}

func benchSoak(args []string, stdout, stderr io.Writer) error {
	opts, err := parseSoakFlags(args, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := runSoak(ctx, opts, stderr)
	if err != nil {
		return err
	}
	writeSoakReport(stdout, res)
	return writeBenchJSON(opts.jsonPath, res)
}

// soakWindow accumulates the figures of the current interval.
type soakWindow struct {
	mu        sync.Mutex
	send      []time.Duration
	delivery  []time.Duration
	errors    int
	limited   int
	errSample []string
}

func (w *soakWindow) addErr(err error) {
	w.mu.Lock()
	w.errors++
	if len(w.errSample) < 10 {
		w.errSample = append(w.errSample, err.Error())
	}
	w.mu.Unlock()
}

func runSoak(ctx context.Context, o *soakOptions, progress io.Writer) (_ *soakResult, err error) {
	b := &benchRun{opts: &benchOptions{postgres: o.postgres, timeline: o.timeline}, progress: progress, runID: benchRandomHex(4)}
	res := &soakResult{RunID: b.runID, Database: "SQLite", Bots: o.bots, Observers: o.observers, Rooms: o.rooms, RatePerBot: o.rate}
	if o.postgres != "" {
		res.Database = "PostgreSQL"
	}
	b.logf("soak: starting server child process")
	srv, err := startBenchServer(ctx, o.postgres)
	if err != nil {
		return nil, err
	}
	defer func() {
		stopErr := srv.stop()
		if stopErr != nil {
			fmt.Fprintf(progress, "bench: warning: %v\n", stopErr)
		}
		if err != nil || stopErr != nil {
			if tail := srv.logs.String(); tail != "" {
				fmt.Fprintf(progress, "bench: server log (tail):\n%s\n", tail)
			}
		}
	}()
	b.server, b.baseURL = srv, srv.url
	b.transport = &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        512,
		MaxIdleConnsPerHost: 512,
		IdleConnTimeout:     90 * time.Second,
	}
	defer b.transport.CloseIdleConnections()

	b.logf("soak: registering %d bots and %d observers", o.bots, o.observers)
	bots, err := b.registerUsers(ctx, b.localparts("bot", o.bots))
	if err != nil {
		return nil, err
	}
	observers, err := b.registerUsers(ctx, b.localparts("obs", o.observers))
	if err != nil {
		return nil, err
	}
	rooms := make([]id.RoomID, o.rooms)
	for r := range rooms {
		created, err := bots[0].CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: fmt.Sprintf("soak %s room %d", b.runID, r)})
		if err != nil {
			return nil, fmt.Errorf("bench soak: POST /createRoom: %w", err)
		}
		rooms[r] = created.RoomID
	}
	type membership struct {
		cli  *mautrix.Client
		room id.RoomID
	}
	var joins []membership
	for i, cli := range bots {
		if i != 0 {
			joins = append(joins, membership{cli, rooms[i%o.rooms]})
		}
	}
	for i, cli := range observers {
		joins = append(joins, membership{cli, rooms[i%o.rooms]})
	}
	if err := benchParallel(ctx, len(joins), 8, func(ctx context.Context, i int) error {
		if _, err := joins[i].cli.JoinRoomByID(ctx, joins[i].room); err != nil {
			return fmt.Errorf("bench soak: %s joining %s: %w", joins[i].cli.UserID, joins[i].room, err)
		}
		return nil
	}); err != nil {
		return nil, err
	}

	filter := fmt.Sprintf(`{"room":{"timeline":{"limit":%d},"state":{"lazy_load_members":true}}}`, o.timeline)
	obs := make([]*soakObserver, o.observers)
	if err := benchParallel(ctx, o.observers, 8, func(ctx context.Context, i int) error {
		resp, err := observers[i].FullSyncRequest(ctx, mautrix.ReqSync{Timeout: 0, FilterID: filter})
		if err != nil {
			return fmt.Errorf("bench soak: initial /sync of %s: %w", observers[i].UserID, err)
		}
		obs[i] = &soakObserver{cli: observers[i], room: rooms[i%o.rooms], filter: filter, since: resp.NextBatch,
			runID: b.runID, last: make(map[int]int)}
		return nil
	}); err != nil {
		return nil, err
	}

	win := &soakWindow{}
	var sentTotal, deliveredTotal atomic.Int64
	var sentWin, deliveredWin atomic.Int64
	acked := make([]atomic.Int64, o.bots) // highest acknowledged sequence number per bot (0: none)

	obsCtx, obsCancel := context.WithCancel(ctx)
	defer obsCancel()
	var obsWG sync.WaitGroup
	for _, ob := range obs {
		obsWG.Go(func() { ob.run(obsCtx, win, &deliveredTotal, &deliveredWin) })
	}

	b.logf("soak: %d bots × %.2g msg/s into %d rooms, %d observers, for %s", o.bots, o.rate, o.rooms, o.observers, o.duration)
	began := time.Now()
	sendCtx, sendCancel := context.WithTimeout(ctx, o.duration)
	defer sendCancel()
	var botWG sync.WaitGroup
	period := time.Duration(float64(time.Second) / o.rate)
	for i, cli := range bots {
		botWG.Go(func() {
			room := rooms[i%o.rooms]
			// Spread the bots over the period so the load is steady.
			select {
			case <-time.After(period * time.Duration(i) / time.Duration(o.bots)):
			case <-sendCtx.Done():
				return
			}
			tick := time.NewTicker(period)
			defer tick.Stop()
			for seq := 1; ; seq++ {
				start := time.Now()
				rec, err := b.sendMessage(sendCtx, cli, room, fmt.Sprintf("soak-%s-%d-%d", b.runID, i, seq),
					fmt.Sprintf("soak %s %d %d %d", b.runID, i, seq, start.UnixNano()))
				if err != nil {
					if sendCtx.Err() != nil {
						return
					}
					win.addErr(err)
					seq-- // retry the same transaction next tick: the sequence stays gap-free
				} else {
					acked[i].Store(int64(seq))
					sentTotal.Add(1)
					sentWin.Add(1)
					win.mu.Lock()
					win.send = append(win.send, rec.ret.Sub(rec.start))
					win.mu.Unlock()
				}
				select {
				case <-tick.C:
				case <-sendCtx.Done():
					return
				}
			}
		})
	}

	// Sampler: one point per interval until the bots stop.
	cpuPrev, _ := b.serverCPU()
	tPrev := began
	var allSend, allDelivery []latencyStats
	sample := func(now time.Time) {
		win.mu.Lock()
		sendD, delD, errs, limited := win.send, win.delivery, win.errors, win.limited
		win.send, win.delivery, win.errors, win.limited = nil, nil, 0, 0
		win.mu.Unlock()
		s := soakSample{ElapsedSec: now.Sub(began).Seconds(), Sent: int(sentWin.Swap(0)), Delivered: int(deliveredWin.Swap(0)),
			Errors: errs, Send: benchSummarize(sendD), Delivery: benchSummarize(delD), LimitedSyncs: limited}
		if r := b.resources(); r.RSSMB != nil {
			s.RSSMB = *r.RSSMB
		}
		if cpu, ok := b.serverCPU(); ok {
			s.CPUPercent = 100 * (cpu - cpuPrev).Seconds() / now.Sub(tPrev).Seconds()
			cpuPrev = cpu
		}
		tPrev = now
		if m, err := soakScrapeMetrics(ctx, b, srv.url); err != nil {
			win.addErr(fmt.Errorf("GET /metrics: %w", err))
		} else {
			s.HeapInuseMB = m["go_memstats_heap_inuse_bytes"] / (1 << 20)
			s.Goroutines = int(m["go_goroutines"])
		}
		res.Samples = append(res.Samples, s)
		allSend, allDelivery = append(allSend, s.Send), append(allDelivery, s.Delivery)
		b.logf("soak: %5.0fs rss %.1f MB heap %.1f MB goroutines %d cpu %.0f%% sent %d delivered %d errors %d send p99 %.1f ms delivery p99 %.1f ms",
			s.ElapsedSec, s.RSSMB, s.HeapInuseMB, s.Goroutines, s.CPUPercent, s.Sent, s.Delivered, s.Errors, s.Send.P99Ms, s.Delivery.P99Ms)
	}
	sample(time.Now()) // the baseline before any load has built up
	tick := time.NewTicker(o.interval)
sampling:
	for {
		select {
		case now := <-tick.C:
			sample(now)
		case <-sendCtx.Done():
			break sampling
		}
	}
	tick.Stop()
	botWG.Wait()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("bench soak: interrupted: %w", ctx.Err())
	}

	// Let the observers catch up with the last acknowledged message (bounded).
	want := make(map[int]int, o.bots)
	for i := range acked {
		want[i] = int(acked[i].Load())
	}
	drainUntil := time.Now().Add(deliveryGrace)
	for time.Now().Before(drainUntil) && !soakCaughtUp(obs, want, o.rooms) {
		time.Sleep(100 * time.Millisecond)
	}
	obsCancel()
	obsWG.Wait()
	sample(time.Now()) // the tail: delivery of the last messages, memory after the load

	res.DurationSec = time.Since(began).Seconds()
	res.Sent, res.Delivered = int(sentTotal.Load()), int(deliveredTotal.Load())
	res.ErrorSamples = win.errSample
	for _, s := range res.Samples {
		res.Errors += s.Errors
	}
	for i, ob := range obs {
		for bot, seq := range want {
			if bot%o.rooms != i%o.rooms {
				continue
			}
			if got := ob.last[bot]; got < seq {
				res.Missing += seq - got
			}
		}
		res.Missing += ob.gaps
		res.Duplicates += ob.dups
	}
	res.Send, res.Delivery = soakWorst(allSend), soakWorst(allDelivery)
	res.Growth = soakGrowthOf(res.Samples, min(o.warmup, o.duration/2))
	res.Checks = soakChecks(res, o)
	return res, nil
}

// soakCaughtUp reports whether every observer has seen every bot of its
// room up to the acknowledged sequence number.
func soakCaughtUp(obs []*soakObserver, want map[int]int, rooms int) bool {
	for i, ob := range obs {
		ob.mu.Lock()
		for bot, seq := range want {
			if bot%rooms == i%rooms && ob.last[bot] < seq {
				ob.mu.Unlock()
				return false
			}
		}
		ob.mu.Unlock()
	}
	return true
}

// soakObserver long-polls /sync for one room and checks that every bot's
// messages arrive once and in sequence.
type soakObserver struct {
	cli    *mautrix.Client
	room   id.RoomID
	filter string
	since  string
	runID  string

	mu   sync.Mutex
	last map[int]int // bot → highest sequence number seen
	gaps int
	dups int
}

func (ob *soakObserver) run(ctx context.Context, win *soakWindow, total, window *atomic.Int64) {
	for ctx.Err() == nil {
		resp, err := ob.cli.FullSyncRequest(ctx, mautrix.ReqSync{Timeout: longPollMs, Since: ob.since, FilterID: ob.filter})
		if err != nil {
			if ctx.Err() == nil {
				win.addErr(fmt.Errorf("/sync of %s: %w", ob.cli.UserID, err))
				time.Sleep(time.Second)
			}
			continue
		}
		now := time.Now()
		if jr := resp.Rooms.Join[ob.room]; jr != nil {
			events := jr.Timeline.Events
			if jr.Timeline.Limited {
				win.mu.Lock()
				win.limited++
				win.mu.Unlock()
				gap, err := ob.fillGap(ctx, jr.Timeline.PrevBatch)
				if err != nil {
					if ctx.Err() == nil {
						win.addErr(err)
					}
					continue // retry from the same since
				}
				events = append(gap, events...)
			}
			var delivery []time.Duration
			ob.mu.Lock()
			for _, evt := range events {
				bot, seq, sentAt, ok := soakParseBody(evt, ob.runID)
				if !ok {
					continue
				}
				switch last := ob.last[bot]; {
				case seq <= last:
					ob.dups++
					continue
				case seq > last+1:
					ob.gaps += seq - last - 1
				}
				ob.last[bot] = seq
				delivery = append(delivery, now.Sub(sentAt))
			}
			ob.mu.Unlock()
			total.Add(int64(len(delivery)))
			window.Add(int64(len(delivery)))
			win.mu.Lock()
			win.delivery = append(win.delivery, delivery...)
			win.mu.Unlock()
		}
		if resp.NextBatch != "" {
			ob.since = resp.NextBatch
		}
	}
}

// fillGap pages back from prevBatch to the current since token and returns
// the skipped events oldest first.
func (ob *soakObserver) fillGap(ctx context.Context, prevBatch string) ([]*event.Event, error) {
	var back []*event.Event
	from := prevBatch
	for page := 0; page < 1000; page++ {
		resp, err := ob.cli.Messages(ctx, ob.room, from, ob.since, mautrix.DirectionBackward, nil, paginationLimit)
		if err != nil {
			return nil, fmt.Errorf("observer %s back-filling a limited timeline: %w", ob.cli.UserID, err)
		}
		back = append(back, resp.Chunk...)
		if resp.End == "" || len(resp.Chunk) == 0 {
			break
		}
		from = resp.End
	}
	for i, j := 0, len(back)-1; i < j; i, j = i+1, j-1 {
		back[i], back[j] = back[j], back[i]
	}
	return back, nil
}

// soakParseBody extracts bot, sequence number and send time from a soak
// message body "soak <run> <bot> <seq> <unixnano>".
func soakParseBody(evt *event.Event, runID string) (bot, seq int, sentAt time.Time, ok bool) {
	if evt.Type.Type != event.EventMessage.Type {
		return 0, 0, time.Time{}, false
	}
	body, _ := evt.Content.Raw["body"].(string)
	f := strings.Fields(body)
	if len(f) != 5 || f[0] != "soak" || f[1] != runID {
		return 0, 0, time.Time{}, false
	}
	bot, err1 := strconv.Atoi(f[2])
	seq, err2 := strconv.Atoi(f[3])
	ns, err3 := strconv.ParseInt(f[4], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, time.Time{}, false
	}
	return bot, seq, time.Unix(0, ns), true
}

// soakScrapeMetrics reads the numeric, label-free lines of the server's
// Prometheus /metrics.
func soakScrapeMetrics(ctx context.Context, b *benchRun, base string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: b.transport}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	return soakParseMetrics(resp.Body)
}

func soakParseMetrics(r io.Reader) (map[string]float64, error) {
	out := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || strings.ContainsRune(line, '{') {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
			out[name] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if _, ok := out["go_goroutines"]; !ok {
		return nil, errors.New("no go_goroutines in /metrics")
	}
	return out, nil
}

// soakWorst keeps the highest p50/p99/max of the intervals and sums the counts.
func soakWorst(ls []latencyStats) latencyStats {
	var w latencyStats
	for _, l := range ls {
		if l.Count == 0 {
			continue
		}
		w.Count += l.Count
		w.P50Ms, w.P90Ms = max(w.P50Ms, l.P50Ms), max(w.P90Ms, l.P90Ms)
		w.P99Ms, w.MaxMs = max(w.P99Ms, l.P99Ms), max(w.MaxMs, l.MaxMs)
	}
	return w
}

// soakGrowthOf compares the first sample at or after warmup with the last
// sample taken under load (the final tail sample is excluded when there are
// enough samples), and fits a least-squares RSS slope over that range.
func soakGrowthOf(samples []soakSample, warmup time.Duration) soakGrowth {
	end := len(samples) - 1
	if end >= 3 {
		end-- // the last sample is taken after the load stopped
	}
	if end < 1 {
		return soakGrowth{}
	}
	from := 0
	for from < end && samples[from].ElapsedSec < warmup.Seconds() {
		from++
	}
	if from == end && from > 0 {
		from--
	}
	a, z := samples[from], samples[end]
	g := soakGrowth{FromSec: a.ElapsedSec, RSSMB: z.RSSMB - a.RSSMB, HeapInuseMB: z.HeapInuseMB - a.HeapInuseMB, Goroutines: z.Goroutines - a.Goroutines}
	var n, sx, sy, sxx, sxy float64
	for _, s := range samples[from : end+1] {
		x := s.ElapsedSec / 3600
		n, sx, sy, sxx, sxy = n+1, sx+x, sy+s.RSSMB, sxx+x*x, sxy+x*s.RSSMB
	}
	if d := n*sxx - sx*sx; n >= 2 && d > 0 {
		g.RSSSlopeMBPerH = (n*sxy - sx*sy) / d
	}
	return g
}

func soakChecks(r *soakResult, o *soakOptions) []benchCheck {
	var c []benchCheck
	add := func(name, value, target, result string) {
		c = append(c, benchCheck{Name: name, Value: value, Target: target, Result: result})
	}
	g := r.Growth
	add(fmt.Sprintf("RSS growth from %.0f s to end", g.FromSec), fmt.Sprintf("%+.1f MB (slope %+.1f MB/h)", g.RSSMB, g.RSSSlopeMBPerH),
		fmt.Sprintf("<= %.0f MB", o.maxGrowthMB), benchVerdict(g.RSSMB <= o.maxGrowthMB))
	add("Go heap in use growth", fmt.Sprintf("%+.1f MB", g.HeapInuseMB), fmt.Sprintf("<= %.0f MB", o.maxGrowthMB), benchVerdict(g.HeapInuseMB <= o.maxGrowthMB))
	// Goroutines: one per in-flight request, so allow one per client.
	allowed := o.bots + o.observers
	add("goroutine growth", fmt.Sprintf("%+d", g.Goroutines), fmt.Sprintf("<= %d", allowed), benchVerdict(g.Goroutines <= allowed))
	add("errors", strconv.Itoa(r.Errors), "0", benchVerdict(r.Errors == 0))
	add("messages sent / delivered to observers", fmt.Sprintf("%d / %d", r.Sent, r.Delivered), "", "")
	add("observers: missing / duplicates", fmt.Sprintf("%d / %d", r.Missing, r.Duplicates), "0 / 0", benchVerdict(r.Missing == 0 && r.Duplicates == 0))
	add("send p50 / p99 (worst interval)", fmt.Sprintf("%.1f / %.1f ms", r.Send.P50Ms, r.Send.P99Ms), "", "")
	add("send→sync delivery p50 / p99 (worst interval)", fmt.Sprintf("%.1f / %.1f ms", r.Delivery.P50Ms, r.Delivery.P99Ms), "", "")
	return c
}

func writeSoakReport(w io.Writer, r *soakResult) {
	fmt.Fprintf(w, "AgentSpace soak %s (%s): %d bots × %.2g msg/s into %d rooms, %d observers, %.0f s\n\n",
		r.RunID, r.Database, r.Bots, r.RatePerBot, r.Rooms, r.Observers, r.DurationSec)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "t (s)\tRSS MB\theap MB\tgoroutines\tCPU %\tsent\tdelivered\terrors\tsend p50\tsend p99\tdelivery p50\tdelivery p99\tlimited\t")
	for _, s := range r.Samples {
		fmt.Fprintf(tw, "%.0f\t%.1f\t%.1f\t%d\t%.0f\t%d\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t\n", s.ElapsedSec, s.RSSMB, s.HeapInuseMB,
			s.Goroutines, s.CPUPercent, s.Sent, s.Delivered, s.Errors, s.Send.P50Ms, s.Send.P99Ms, s.Delivery.P50Ms, s.Delivery.P99Ms, s.LimitedSyncs)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tVALUE\tTARGET\tRESULT")
	fail := 0
	for _, c := range r.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, c.Value, c.Target, c.Result)
		if c.Result == "FAIL" {
			fail++
		}
	}
	_ = tw.Flush()
	verdict := "PASS"
	if fail > 0 {
		verdict = fmt.Sprintf("FAIL (%d checks)", fail)
	}
	fmt.Fprintf(w, "\nverdict: %s\n", verdict)
	for _, e := range r.ErrorSamples {
		fmt.Fprintf(w, "error: %s\n", e)
	}
}
