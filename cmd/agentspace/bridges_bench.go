package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/tidwall/gjson"
)

// wsBenchResult is the report of "agentspace bench ws" (also --json).
type wsBenchResult struct {
	Database        string       `json:"database"`
	Clients         int          `json:"clients"`
	Messages        int          `json:"messages"`
	IntervalMs      float64      `json:"interval_ms"`
	Deliveries      int          `json:"deliveries"`
	Expected        int          `json:"expected"`
	Missing         int          `json:"missing"`
	Duplicates      int          `json:"duplicates"`
	OrderViolations int          `json:"order_violations"`
	ConnectSeconds  float64      `json:"connect_seconds"`
	Latency         latencyStats `json:"send_to_receive"`
	PostLatency     latencyStats `json:"post_request"`
}

// benchWS measures the agent gateway's WebSocket fan-out: --clients
// connections (each its own user) join one room; one agent posts
// --messages messages through POST /api/rooms/{room}/messages; the latency
// is from the start of each POST to the message frame arriving at each
// client.
func benchWS(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench ws", flag.ContinueOnError)
	fs.SetOutput(stderr)
	clients := fs.Int("clients", 200, "WebSocket clients in the room (one user each)")
	messages := fs.Int("messages", 200, "messages posted")
	interval := fs.Duration("interval", 20*time.Millisecond, "pause between two posts")
	target := fs.String("url", "", "measure a running server at this base URL (it needs open registration and no rate limit)")
	postgres := fs.String("postgres", "", "postgres:// URL for the child server (default: SQLite in a temp dir)")
	jsonPath := fs.String("json", "", "also write the results as JSON to this file")
	timeout := fs.Duration("timeout", 5*time.Minute, "abort after this long")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: agentspace bench ws [flags]\n\nStarts a server (or uses --url), connects --clients WebSocket clients to one\nroom through /ws, posts --messages messages with POST /api/rooms/{room}/messages\nand measures send -> receive latency at every client.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *clients < 1 || *messages < 1 {
		return errors.New("bench ws: --clients and --messages must be at least 1")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	baseURL, dbName := *target, "remote"
	if baseURL == "" {
		server, err := startBenchServer(ctx, *postgres)
		if err != nil {
			return err
		}
		defer server.stop()
		baseURL, dbName = server.url, "sqlite"
		if *postgres != "" {
			dbName = "postgres"
		}
		fmt.Fprintf(stderr, "bench ws: server at %s\n", baseURL)
	}
	res, err := runWSBench(ctx, baseURL, *clients, *messages, *interval, stderr)
	if err != nil {
		return err
	}
	res.Database = dbName
	writeWSBenchReport(stdout, res)
	if err := writeBenchJSON(*jsonPath, res); err != nil {
		return err
	}
	if res.Missing > 0 || res.OrderViolations > 0 {
		return fmt.Errorf("bench ws: %d missing, %d out of order", res.Missing, res.OrderViolations)
	}
	return nil
}

func writeWSBenchReport(w io.Writer, res *wsBenchResult) {
	fmt.Fprintf(w, "AgentSpace WebSocket fan-out benchmark (%s)\n", res.Database)
	fmt.Fprintf(w, "  %d clients in one room, %d messages posted every %.0f ms (connect + join of all clients: %.2fs)\n",
		res.Clients, res.Messages, res.IntervalMs, res.ConnectSeconds)
	fmt.Fprintf(w, "  send -> receive at each client: p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms (%d deliveries)\n",
		res.Latency.P50Ms, res.Latency.P90Ms, res.Latency.P99Ms, res.Latency.MaxMs, res.Latency.Count)
	fmt.Fprintf(w, "  POST /api/rooms/{room}/messages: p50 %.1f ms, p99 %.1f ms\n", res.PostLatency.P50Ms, res.PostLatency.P99Ms)
	fmt.Fprintf(w, "  missing %d of %d, duplicates %d, order violations %d\n", res.Missing, res.Expected, res.Duplicates, res.OrderViolations)
}

// wsBenchClient is one connected client and what it received.
type wsBenchClient struct {
	conn    *websocket.Conn
	mu      sync.Mutex
	arrived map[int]time.Time
	order   []int
	dups    int
	joined  chan struct{}
}

func runWSBench(ctx context.Context, baseURL string, nClients, nMessages int, interval time.Duration, progress io.Writer) (*wsBenchResult, error) {
	b := &benchRun{opts: &benchOptions{}, progress: progress, runID: benchRandomHex(4), baseURL: baseURL,
		transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	users, err := b.registerUsers(ctx, b.localparts("ws", nClients+1))
	if err != nil {
		return nil, err
	}
	sender, listeners := users[0], users[1:]
	roomName := "bench-ws-" + b.runID
	var created struct {
		RoomID string `json:"room_id"`
	}
	if err := wsBenchPOST(ctx, baseURL+"/api/rooms", sender.AccessToken, map[string]any{"name": roomName, "public": true}, &created); err != nil {
		return nil, err
	}

	wsURL, err := url.Parse(baseURL)
	if err != nil {
		return nil, err
	}
	wsURL.Scheme = strings.Replace(wsURL.Scheme, "http", "ws", 1)
	wsURL.Path = "/ws"
	httpClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: nClients}}
	cls := make([]*wsBenchClient, len(listeners))
	start := time.Now()
	err = benchParallel(ctx, len(listeners), 16, func(ctx context.Context, i int) error {
		conn, _, err := websocket.Dial(ctx, wsURL.String(), &websocket.DialOptions{HTTPClient: httpClient})
		if err != nil {
			return fmt.Errorf("bench ws: connecting client %d: %w", i, err)
		}
		conn.SetReadLimit(1 << 20)
		c := &wsBenchClient{conn: conn, arrived: map[int]time.Time{}, joined: make(chan struct{})}
		cls[i] = c
		go c.read()
		join, _ := json.Marshal(map[string]string{"type": "join", "room": roomName, "token": listeners[i].AccessToken})
		if err := conn.Write(ctx, websocket.MessageText, join); err != nil {
			return err
		}
		select {
		case <-c.joined:
			return nil
		case <-time.After(30 * time.Second):
			return fmt.Errorf("bench ws: client %d got no joined frame", i)
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	defer func() {
		for _, c := range cls {
			if c != nil {
				_ = c.conn.Close(websocket.StatusNormalClosure, "")
			}
		}
	}()
	if err != nil {
		return nil, err
	}
	res := &wsBenchResult{Clients: nClients, Messages: nMessages, IntervalMs: float64(interval) / float64(time.Millisecond),
		ConnectSeconds: time.Since(start).Seconds(), Expected: nClients * nMessages}
	fmt.Fprintf(progress, "bench ws: %d clients joined in %.2fs; posting %d messages\n", nClients, res.ConnectSeconds, nMessages)

	sent := make([]time.Time, nMessages)
	var posts []time.Duration
	for m := range nMessages {
		sent[m] = time.Now()
		if err := wsBenchPOST(ctx, baseURL+"/api/rooms/"+url.PathEscape(created.RoomID)+"/messages", sender.AccessToken,
			map[string]any{"content": "ws-bench " + strconv.Itoa(m)}, nil); err != nil {
			return nil, err
		}
		posts = append(posts, time.Since(sent[m]))
		select {
		case <-time.After(interval):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// Wait for the stragglers (bounded).
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		total := 0
		for _, c := range cls {
			c.mu.Lock()
			total += len(c.arrived)
			c.mu.Unlock()
		}
		if total >= res.Expected {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	var lats []time.Duration
	for _, c := range cls {
		c.mu.Lock()
		for m, at := range c.arrived {
			lats = append(lats, at.Sub(sent[m]))
		}
		res.Deliveries += len(c.arrived)
		res.Duplicates += c.dups
		for i := 1; i < len(c.order); i++ {
			if c.order[i] < c.order[i-1] {
				res.OrderViolations++
			}
		}
		c.mu.Unlock()
	}
	res.Missing = res.Expected - res.Deliveries
	res.Latency = benchSummarize(lats)
	res.PostLatency = benchSummarize(posts)
	return res, nil
}

// read records the arrival of each bench message.
func (c *wsBenchClient) read() {
	for {
		_, data, err := c.conn.Read(context.Background())
		if err != nil {
			return
		}
		now := time.Now()
		switch gjson.GetBytes(data, "type").Str {
		case "joined":
			close(c.joined)
		case "message":
			n, ok := strings.CutPrefix(gjson.GetBytes(data, "content").Str, "ws-bench ")
			if !ok {
				continue
			}
			m, err := strconv.Atoi(n)
			if err != nil {
				continue
			}
			c.mu.Lock()
			if _, seen := c.arrived[m]; seen {
				c.dups++
			} else {
				c.arrived[m] = now
				c.order = append(c.order, m)
			}
			c.mu.Unlock()
		}
	}
}

// wsBenchPOST posts JSON with a token and decodes the answer into out.
func wsBenchPOST(ctx context.Context, u, token string, body, out any) error {
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("bench ws: POST %s: %w", u, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("bench ws: POST %s: HTTP %d: %s", u, resp.StatusCode, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}
