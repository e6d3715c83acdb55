package clientapi

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/internal/testdb"
)

// Resource limits: JSON nesting depth, the per-user long-poll cap, the HTTP
// timeouts against slow clients, and no goroutine leak after bad requests.

func TestJSONDepthLimit(t *testing.T) {
	ts := newTestServer(t)
	_, tok := ts.createUser("deep")
	room := ts.createRoom(tok, map[string]any{})
	nested := func(depth int) string { // an object holding depth-1 nested arrays
		return `{"msgtype":"m.text","body":"x","n":` + strings.Repeat("[", depth-1) + strings.Repeat("]", depth-1) + `}`
	}
	send := rmV3 + "/rooms/" + url.PathEscape(room) + "/send/m.room.message/"
	ts.mustDo(200, "PUT", send+"at-limit", tok, nested(maxJSONDepth))
	ts.wantErr(400, "M_BAD_JSON", "PUT", send+"past-limit", tok, nested(maxJSONDepth+1))
	// The same for decodeJSON bodies, and for a body of nothing but
	// brackets up to the body limit (invalid JSON, refused for its depth
	// before anything parses it).
	ts.wantErr(400, "M_BAD_JSON", "POST", rmV3+"/createRoom", tok, `{"creation_content":`+strings.Repeat("[", maxJSONDepth)+strings.Repeat("]", maxJSONDepth)+`}`)
	start := time.Now()
	ts.wantErr(400, "M_BAD_JSON", "POST", rmV3+"/createRoom", tok, strings.Repeat("[", 1<<20-1))
	ts.wantErr(400, "M_BAD_JSON", "POST", rmV3+"/user/"+url.PathEscape("@deep:localhost")+"/filter", tok, strings.Repeat(`{"a":`, 200)+"1"+strings.Repeat("}", 200))
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("refusing deep bodies took %s", d)
	}
	// Brackets inside strings do not count.
	ts.mustDo(200, "PUT", send+"strings", tok, `{"msgtype":"m.text","body":"`+strings.Repeat("[{", 500)+`\"]"}`)
}

func TestLongPollCapPerUser(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.MaxLongPollsPerUser = 2 })
	alice, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	room := ts.createRoom(aliceTok, map[string]any{"preset": "public_chat"})
	ts.mustDo(200, "POST", rmV3+"/join/"+url.PathEscape(room), bobTok, map[string]any{})
	since := ts.sync(aliceTok, "", 0, "").NextBatch
	poll := rmV3 + "/sync?timeout=20000&since=" + url.QueryEscape(since)

	type result struct {
		status int
		body   []byte
	}
	results := make(chan result, 2)
	for range 2 {
		go func() {
			status, body := ts.doRaw("GET", poll, aliceTok, nil)
			results <- result{status, body}
		}()
	}
	waitFor(t, 10*time.Second, "two waiting long-polls", func() bool { return ts.api.longPolls.waiting(alice) == 2 })

	// The third waits for nothing: 429 with retry_after_ms.
	out := ts.wantErr(429, "M_LIMIT_EXCEEDED", "GET", poll, aliceTok, nil)
	if ms, _ := out["retry_after_ms"].(float64); ms <= 0 {
		t.Errorf("no retry_after_ms in %v", out)
	}
	// Requests that answer at once are not limited, nor are other users.
	ts.mustDo(200, "GET", rmV3+"/sync?timeout=0&since="+url.QueryEscape(since), aliceTok, nil)
	ts.mustDo(200, "GET", rmV3+"/sync?timeout=20000", aliceTok, nil)
	bobDone := make(chan int, 1)
	bobSince := ts.sync(bobTok, "", 0, "").NextBatch
	go func() {
		status, _ := ts.doRaw("GET", rmV3+"/sync?timeout=20000&since="+url.QueryEscape(bobSince), bobTok, nil)
		bobDone <- status
	}()

	// A message ends every long-poll; the slots are free again.
	ts.send(aliceTok, room, "wake up")
	for range 2 {
		select {
		case r := <-results:
			if r.status != 200 {
				t.Fatalf("long-poll: %d %s", r.status, r.body)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("long-polls did not return after a message")
		}
	}
	if status := <-bobDone; status != 200 {
		t.Fatalf("other user's long-poll: %d", status)
	}
	waitFor(t, 5*time.Second, "slots released", func() bool { return ts.api.longPolls.waiting(alice) == 0 })
	ts.api.longPolls.mu.Lock()
	tracked := len(ts.api.longPolls.active)
	ts.api.longPolls.mu.Unlock()
	if tracked != 0 {
		t.Errorf("limiter still tracks %d users", tracked)
	}

	// A client that gives up releases its slot.
	poll = rmV3 + "/sync?timeout=20000&since=" + url.QueryEscape(ts.sync(aliceTok, "", 0, "").NextBatch)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+poll, nil)
	req.Header.Set("Authorization", "Bearer "+aliceTok)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, 10*time.Second, "a waiting long-poll", func() bool { return ts.api.longPolls.waiting(alice) == 1 })
	cancel()
	<-done
	waitFor(t, 5*time.Second, "the cancelled poll's slot released", func() bool { return ts.api.longPolls.waiting(alice) == 0 })
}

func TestLongPollCapDisabled(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.MaxLongPollsPerUser = 0 })
	_, tok := ts.createUser("many")
	since := ts.sync(tok, "", 0, "").NextBatch
	var wg sync.WaitGroup
	errs := make(chan string, 5)
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if status, body := ts.doRaw("GET", rmV3+"/sync?timeout=300&since="+url.QueryEscape(since), tok, nil); status != 200 {
				errs <- fmt.Sprintf("%d %s", status, body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatalf("with max_long_polls_per_user 0 a long-poll was refused: %s", e)
	}
}

func TestHTTPTimeoutsConfigured(t *testing.T) {
	ts := newTestServer(t)
	h := ts.http
	if h.ReadHeaderTimeout != ReadHeaderTimeout || h.ReadTimeout != ReadTimeout || h.IdleTimeout != IdleTimeout || h.MaxHeaderBytes != MaxHeaderBytes {
		t.Fatalf("http.Server limits: header %s read %s idle %s max header %d", h.ReadHeaderTimeout, h.ReadTimeout, h.IdleTimeout, h.MaxHeaderBytes)
	}
	if ReadHeaderTimeout <= 0 || ReadHeaderTimeout > 30*time.Second || ReadTimeout <= 0 || IdleTimeout <= 0 {
		t.Fatalf("slow-loris protection off: header %s read %s idle %s", ReadHeaderTimeout, ReadTimeout, IdleTimeout)
	}
	// Oversized headers are refused by net/http with 431.
	req, _ := http.NewRequest("GET", ts.URL+"/_matrix/client/versions", nil)
	req.Header.Set("X-Big", strings.Repeat("a", MaxHeaderBytes+4096))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("oversized header: %d", resp.StatusCode)
	}
}

// newShortTimeoutServer is newTestServer with the HTTP timeouts shortened
// so that slow-client tests finish quickly.
func newShortTimeoutServer(t *testing.T, header, read, idle time.Duration) *testServer {
	t.Helper()
	cfg := config.Default()
	cfg.BindAddress = "127.0.0.1"
	cfg.Port = 0
	cfg.Database.Path = filepath.Join(t.TempDir(), "agentspace.db")
	if testdb.Postgres() {
		cfg.Database.URL = testdb.NewPostgres(t)
	}
	cfg.BcryptCost = 4
	cfg.RateLimit.Enabled = false
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := NewServer(ctx, cfg, log)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	srv.http.ReadHeaderTimeout, srv.http.ReadTimeout, srv.http.IdleTimeout = header, read, idle
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &testServer{Server: srv, URL: srv.BaseURL(), t: t}
}

// closedWithin reports whether the server closes conn within d (reading
// and discarding whatever it sends, such as a 408 response).
func closedWithin(conn net.Conn, d time.Duration) bool {
	_ = conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

func TestSlowClients(t *testing.T) {
	const header, read, idle = 400 * time.Millisecond, 1500 * time.Millisecond, 600 * time.Millisecond
	ts := newShortTimeoutServer(t, header, read, idle)
	addr := strings.TrimPrefix(ts.URL, "http://")
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	baseline := stableGoroutines(t, ts, -1)

	// Slow-loris: 20 connections each sending a header byte every 100 ms
	// are cut off after ReadHeaderTimeout while others are still served.
	var wg sync.WaitGroup
	cut := make(chan time.Duration, 20)
	for range 20 {
		c := dial()
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			_, _ = c.Write([]byte("GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nX-Slow: "))
			for i := 0; i < 100; i++ {
				if _, err := c.Write([]byte("a")); err != nil {
					break
				}
				_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				if _, err := c.Read(make([]byte, 1)); err != nil {
					if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
						break // closed (after a 408 or without a word)
					}
				} else {
					break
				}
			}
			cut <- time.Since(start)
		}()
	}
	for i := 0; i < 3; i++ {
		ts.mustDo(200, "GET", "/_matrix/client/versions", "", nil)
	}
	wg.Wait()
	close(cut)
	for d := range cut {
		if d > header+2*time.Second {
			t.Errorf("slow-loris connection lived %s (ReadHeaderTimeout %s)", d, header)
		}
	}

	// A body dribbled byte by byte is cut off at ReadTimeout; the handler
	// answers 4xx (or the connection just closes), never 5xx.
	c := dial()
	start := time.Now()
	_, _ = c.Write([]byte("POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"))
	var resp []byte
	for i := 0; i < 100; i++ {
		if _, err := c.Write([]byte(" ")); err != nil {
			break
		}
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		resp = append(resp, buf[:n]...)
		if err != nil {
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				break
			}
		}
	}
	if d := time.Since(start); d > read+2*time.Second {
		t.Errorf("slow body connection lived %s (ReadTimeout %s)", d, read)
	}
	if bytes.HasPrefix(resp, []byte("HTTP/1.1 5")) {
		t.Errorf("slow body answered with a 5xx: %q", resp)
	}

	// An idle keep-alive connection is closed after IdleTimeout.
	c = dial()
	_, _ = c.Write([]byte("GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n"))
	r := bufio.NewReader(c)
	res, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if !closedWithin(c, idle+2*time.Second) {
		t.Errorf("idle connection still open after %s", idle+2*time.Second)
	}
	// Connections that never send anything are closed too.
	if !closedWithin(dial(), header+idle+2*time.Second) {
		t.Errorf("silent connection still open")
	}
	stableGoroutines(t, ts, baseline)
}

func TestBadRequestBurstNoGoroutineLeak(t *testing.T) {
	ts := newTestServer(t)
	user, tok := ts.createUser("burst")
	room := ts.createRoom(tok, map[string]any{})
	since := ts.sync(tok, "", 0, "").NextBatch
	baseline := stableGoroutines(t, ts, -1)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	client := &http.Client{Timeout: 20 * time.Second}
	send := rmV3 + "/rooms/" + url.PathEscape(room) + "/send/m.room.message/"
	bad := []struct {
		method, path, token, body string
	}{
		{"POST", rmV3 + "/createRoom", tok, "{not json"},
		{"POST", rmV3 + "/createRoom", tok, strings.Repeat("[", 5000)},
		{"POST", rmV3 + "/createRoom", tok, `{"invite":"nope"}`},
		{"PUT", send + "x", tok, `[1,2,3]`},
		{"PUT", send + "y", tok, "\xff\xfe"},
		{"PUT", send + "z", "garbage-token", `{}`},
		{"POST", rmV3 + "/login", "", strings.Repeat("a", 2<<20)},
		{"GET", rmV3 + "/sync?since=bogus", tok, ""},
		{"GET", rmV3 + "/sync?filter=%7Bbad", tok, ""},
		{"GET", rmV3 + "/rooms/" + url.PathEscape(room) + "/messages?from=zzz", tok, ""},
		{"GET", rmV3 + "/rooms/%00/state", tok, ""},
		{"GET", rmV3 + "/profile/%40%00%3Alocalhost", tok, ""},
		{"GET", "/_matrix/client/v3/nowhere", tok, ""},
		{"DELETE", rmV3 + "/createRoom", tok, ""},
		{"POST", "/_matrix/media/v3/upload", "", "x"},
	}
	var wg sync.WaitGroup
	fail := make(chan string, 1000)
	sem := make(chan struct{}, 16)
	for round := 0; round < 20; round++ {
		for _, b := range bad {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				req, err := http.NewRequest(b.method, ts.URL+b.path, strings.NewReader(b.body))
				if err != nil {
					fail <- err.Error()
					return
				}
				if b.token != "" {
					req.Header.Set("Authorization", "Bearer "+b.token)
				}
				resp, err := client.Do(req)
				if err != nil {
					fail <- fmt.Sprintf("%s %s: %v", b.method, b.path, err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode >= 500 || resp.StatusCode < 400 {
					fail <- fmt.Sprintf("%s %s: %d", b.method, b.path, resp.StatusCode)
				}
			}()
		}
		// Long-polls the client abandons, and requests cut off mid-body.
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+rmV3+"/sync?timeout=30000&since="+url.QueryEscape(since), nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
			if err != nil {
				return
			}
			_, _ = fmt.Fprintf(c, "PUT %sabort HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 100000\r\n\r\n{\"body\":\"", send, tok)
			c.Close()
		}()
	}
	wg.Wait()
	close(fail)
	for f := range fail {
		t.Error(f)
	}
	client.CloseIdleConnections()
	http.DefaultClient.CloseIdleConnections()
	stableGoroutines(t, ts, baseline)
	if n := ts.api.longPolls.waiting(user); n != 0 {
		t.Errorf("%d long-poll slots still taken after the clients left", n)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 32<<20 {
		t.Errorf("heap grew by %d MiB after the burst", grown>>20)
	}
	// The server still works.
	ts.send(tok, room, "still alive")
}

// stableGoroutines waits until the goroutine count settles at or below
// want (want < 0: just settle) and returns it; on timeout it fails with a
// goroutine dump.
func stableGoroutines(t *testing.T, ts *testServer, want int) int {
	t.Helper()
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(15 * time.Second)
	last, same := -1, 0
	for time.Now().Before(deadline) {
		n := runtime.NumGoroutine()
		if want >= 0 && n <= want+2 { // slack for runtime and test helpers
			return n
		}
		if want < 0 {
			if n == last {
				if same++; same >= 5 {
					return n
				}
			} else {
				last, same = n, 0
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if want < 0 {
		return runtime.NumGoroutine()
	}
	var buf bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
	t.Fatalf("goroutines: %d, baseline %d: leak?\n%s", runtime.NumGoroutine(), want, buf.String())
	return 0
}

// waitFor polls cond until it holds or limit passes.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
