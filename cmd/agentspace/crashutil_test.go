package main

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/lib/pq"
	_ "github.com/mattn/go-sqlite3"
	"gopkg.in/yaml.v3"

	"github.com/agentspace/agentspace/internal/testdb"
)

// Helpers of the crash-safety and disk-full tests: a child server process
// whose log can be read while it runs, a raw Matrix HTTP client, and the
// consistency checks run on the database files after a crash.

// lockedBuffer is a bytes.Buffer safe for the exec copy goroutine and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// liveProc is an agentspace child process (see startLiveProc).
type liveProc struct {
	t    testing.TB
	cmd  *exec.Cmd
	URL  string
	log  *lockedBuffer
	done chan error
}

// startLiveProc starts the binary with env (on top of the test defaults of
// startServerProc) on a fresh port and waits until it answers /versions.
func startLiveProc(t testing.TB, env ...string) *liveProc {
	t.Helper()
	return startLiveProcArgs(t, nil, env...)
}

// startLiveProcArgs is startLiveProc with "serve" arguments (e.g. -config FILE).
func startLiveProcArgs(t testing.TB, args []string, env ...string) *liveProc {
	t.Helper()
	port := freePort(t)
	cmd := newServerCmd(t, append([]string{"PORT=" + strconv.Itoa(port)}, env...)...)
	if len(args) > 0 {
		cmd.Args = append(cmd.Args, append([]string{"serve"}, args...)...)
	}
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &liveProc{t: t, cmd: cmd, URL: fmt.Sprintf("http://127.0.0.1:%d", port), log: out, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(p.kill)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(p.URL + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case err := <-p.done:
			t.Fatalf("server exited during start-up: %v\n%s", err, out.String())
		case <-time.After(25 * time.Millisecond):
		}
	}
	t.Fatalf("server not ready within 30s\n%s", out.String())
	return nil
}

// newServerCmd is the binary with the test defaults plus env (later entries win).
func newServerCmd(t testing.TB, env ...string) *exec.Cmd {
	cmd := exec.Command(agentspaceBinary(t))
	cmd.Env = append(os.Environ(),
		"BIND_ADDRESS=127.0.0.1",
		"ENABLE_REGISTRATION=true",
		"RATE_LIMIT=off",
		"BCRYPT_COST=4",
		"LOG_LEVEL=warn",
	)
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *liveProc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case err := <-p.done:
		p.done <- err // keep it readable for later calls
	case <-time.After(10 * time.Second):
		p.t.Errorf("process did not die within 10s of SIGKILL")
	}
}

// stop sends SIGTERM and requires a clean exit within 10 s.
func (p *liveProc) stop() {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			p.t.Fatalf("server exit after SIGTERM: %v\n%s", err, p.log.String())
		}
	case <-time.After(10 * time.Second):
		p.t.Fatalf("server did not exit within 10s of SIGTERM\n%s", p.log.String())
	}
}

// mxClient is a raw Matrix client: one user, exact status codes.
type mxClient struct {
	base   string
	token  string
	userID string
	http   *http.Client
}

var crashTransport = &http.Transport{MaxIdleConns: 64, MaxIdleConnsPerHost: 32, IdleConnTimeout: 30 * time.Second}

// do sends a request; body nil, []byte/string verbatim, or marshalled.
// err is a transport error (e.g. the server was killed mid-request).
func (c *mxClient) do(method, path string, body any) (int, map[string]any, error) {
	var rdr io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rdr = bytes.NewReader(b)
	case string:
		rdr = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return 0, nil, err
		}
		rdr = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, c.base+path, rdr)
	if err != nil {
		return 0, nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, err
	}
	var out map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			return resp.StatusCode, nil, fmt.Errorf("%s %s: %d, body is not a JSON object: %q", method, path, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode, out, nil
}

// must is do that fails the test unless the status is want.
func (c *mxClient) must(t testing.TB, want int, method, path string, body any) map[string]any {
	t.Helper()
	status, out, err := c.do(method, path, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if status != want {
		t.Fatalf("%s %s: status %d, want %d: %v", method, path, status, want, out)
	}
	return out
}

// registerUser registers localpart with m.login.dummy user-interactive auth.
func registerUser(t testing.TB, base, localpart string) *mxClient {
	t.Helper()
	c := &mxClient{base: base, http: &http.Client{Transport: crashTransport, Timeout: 30 * time.Second}}
	body := map[string]any{"username": localpart, "password": "crash-test-password", "inhibit_login": false}
	status, out, err := c.do("POST", "/_matrix/client/v3/register", body)
	if err != nil || status != http.StatusUnauthorized {
		t.Fatalf("register %s: %d %v %v", localpart, status, out, err)
	}
	body["auth"] = map[string]any{"type": "m.login.dummy", "session": out["session"]}
	out = c.must(t, http.StatusOK, "POST", "/_matrix/client/v3/register", body)
	c.token, _ = out["access_token"].(string)
	c.userID, _ = out["user_id"].(string)
	if c.token == "" || c.userID == "" {
		t.Fatalf("register %s: no token in %v", localpart, out)
	}
	return c
}

// msgEvent is the part of a client event the checks look at.
type msgEvent struct {
	EventID string `json:"event_id"`
	Type    string `json:"type"`
	Sender  string `json:"sender"`
	Content struct {
		Body string `json:"body"`
	} `json:"content"`
}

func decodeEvents(v any) []msgEvent {
	raw, _ := json.Marshal(v)
	var evs []msgEvent
	_ = json.Unmarshal(raw, &evs)
	return evs
}

// allMessages pages /messages backwards through the whole room and returns
// its m.room.message events, newest first.
func allMessages(t testing.TB, c *mxClient, roomID string) []msgEvent {
	t.Helper()
	var out []msgEvent
	from := ""
	for page := 0; page < 1000; page++ {
		q := url.Values{"dir": {"b"}, "limit": {"1000"}}
		if from != "" {
			q.Set("from", from)
		}
		resp := c.must(t, http.StatusOK, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?"+q.Encode(), nil)
		chunk := decodeEvents(resp["chunk"])
		for _, e := range chunk {
			if e.Type == "m.room.message" {
				out = append(out, e)
			}
		}
		end, _ := resp["end"].(string)
		if len(chunk) == 0 || end == "" {
			return out
		}
		from = end
	}
	t.Fatalf("/messages did not end within 1000 pages")
	return nil
}

// sqliteReadOnly opens an SQLite file read-only (the server must be stopped).
func sqliteReadOnly(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro&_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	return db
}

// checkSQLiteIntegrity runs PRAGMA integrity_check and foreign_key_check on
// the (stopped or killed) server's database file, read-only, then the
// schema-level invariants of checkInvariants.
func checkSQLiteIntegrity(t testing.TB, path string) {
	t.Helper()
	db := sqliteReadOnly(t, path)
	defer db.Close()
	rows, err := db.Query(`PRAGMA integrity_check`)
	if err != nil {
		t.Fatalf("integrity_check: %v", err)
	}
	var results []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		results = append(results, s)
	}
	rows.Close()
	if len(results) != 1 || results[0] != "ok" {
		t.Fatalf("PRAGMA integrity_check: %v", results)
	}
	checkInvariants(t, db)
}

// checkInvariants checks what the schema cannot enforce but every committed
// state must satisfy: the stream counter is past every stored position,
// every transaction, state and membership row points at a stored event,
// room histories are linear (depth grows with position) and no message body
// (unique per transaction in these tests) is stored twice in a room.
func checkInvariants(t testing.TB, db *sql.DB) {
	t.Helper()
	var streamPos, maxEvent int64
	if err := db.QueryRow(`SELECT pos FROM stream_position WHERE id = 1`).Scan(&streamPos); err != nil {
		t.Fatalf("stream_position: %v", err)
	}
	if err := db.QueryRow(`SELECT COALESCE(MAX(pos), 0) FROM events`).Scan(&maxEvent); err != nil {
		t.Fatal(err)
	}
	if streamPos < maxEvent {
		t.Errorf("stream position %d is behind the newest event %d", streamPos, maxEvent)
	}
	for name, q := range map[string]string{
		"transactions without event": `SELECT COUNT(*) FROM transactions t LEFT JOIN events e ON e.event_id = t.event_id WHERE e.event_id IS NULL`,
		"room_state without event":   `SELECT COUNT(*) FROM room_state s LEFT JOIN events e ON e.event_id = s.event_id WHERE e.event_id IS NULL`,
		"memberships without event":  `SELECT COUNT(*) FROM memberships m LEFT JOIN events e ON e.event_id = m.event_id WHERE e.event_id IS NULL`,
		"events without room":        `SELECT COUNT(*) FROM events e LEFT JOIN rooms r ON r.room_id = e.room_id WHERE r.room_id IS NULL AND e.type <> 'm.room.create'`,
		"duplicate message bodies":   `SELECT COUNT(*) FROM (SELECT room_id, body FROM events WHERE type = 'm.room.message' AND body IS NOT NULL GROUP BY room_id, body HAVING COUNT(*) > 1) d`,
		"stale room_state rows":      `SELECT COUNT(*) FROM room_state s WHERE s.pos < (SELECT MAX(e.pos) FROM events e WHERE e.room_id = s.room_id AND e.type = s.type AND e.state_key = s.state_key)`,
		"positions past the counter": `SELECT COUNT(*) FROM events WHERE pos > (SELECT pos FROM stream_position WHERE id = 1)`,
	} {
		var n int
		if err := db.QueryRow(q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if n != 0 {
			t.Errorf("invariant broken: %s: %d", name, n)
		}
	}
	rows, err := db.Query(`SELECT room_id, pos, depth FROM events ORDER BY room_id, pos`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	last := map[string]int64{}
	for rows.Next() {
		var room string
		var pos, depth int64
		if err := rows.Scan(&room, &pos, &depth); err != nil {
			t.Fatal(err)
		}
		if prev, ok := last[room]; ok && depth != prev+1 {
			t.Errorf("room %s: event at %d has depth %d after depth %d: history not linear", room, pos, depth, prev)
		}
		last[room] = depth
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}

// freshPostgres creates an empty database for one test (internal/testdb:
// skipped without PostgreSQL, failed in CI), dropped when the test ends,
// and returns its URL and a connection to it for the integrity checks.
func freshPostgres(t testing.TB) (string, *sql.DB) {
	t.Helper()
	u := testdb.RequirePostgres(t)
	db, err := sql.Open("postgres", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return u, db
}

// checkPostgresIntegrity verifies every B-tree index of the database with
// amcheck (bt_index_check with heapallindexed: every heap tuple is in its
// indexes) when the extension is available, then the schema invariants.
func checkPostgresIntegrity(t testing.TB, db *sql.DB) (indexesChecked int) {
	t.Helper()
	if _, err := db.Exec(`CREATE EXTENSION IF NOT EXISTS amcheck`); err != nil {
		t.Logf("amcheck not available (%v): checking invariants only", err)
	} else {
		rows, err := db.Query(`
			SELECT c.relname, bt_index_check(c.oid, true) IS NULL
			FROM pg_index i
			JOIN pg_class c ON c.oid = i.indexrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace
			JOIN pg_am am ON am.oid = c.relam
			WHERE am.amname = 'btree' AND n.nspname = 'public' AND c.relpersistence <> 't'`)
		if err != nil {
			t.Fatalf("amcheck: %v", err)
		}
		for rows.Next() {
			var name string
			var ok bool
			if err := rows.Scan(&name, &ok); err != nil {
				t.Fatalf("amcheck: %v", err)
			}
			indexesChecked++
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("amcheck: %v", err)
		}
		rows.Close()
		if indexesChecked == 0 {
			t.Fatal("amcheck found no indexes to check")
		}
	}
	checkInvariants(t, db)
	return indexesChecked
}

// serveLoopback serves h on 127.0.0.1 until the test ends and returns its
// base URL (receivers standing in for appservices and webhooks).
func serveLoopback(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// newRegistration writes an appservice registration for @agent_.* users
// with the real "agentspace appservice new" command and returns its path
// and tokens.
func newRegistration(t *testing.T, dir, id, sender, url string) (path, asToken, hsToken string) {
	t.Helper()
	path = filepath.Join(dir, id+".yaml")
	out, err := exec.Command(agentspaceBinary(t), "appservice", "new", "--id", id, "--url", url,
		"--sender", sender, "--users", "@agent_.*:localhost", "--out", path).CombinedOutput()
	if err != nil {
		t.Fatalf("appservice new: %v\n%s", err, out)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var reg struct {
		AS string `yaml:"as_token"`
		HS string `yaml:"hs_token"`
	}
	if err := yaml.Unmarshal(data, &reg); err != nil || reg.AS == "" || reg.HS == "" {
		t.Fatalf("registration: %v\n%s", err, data)
	}
	return path, reg.AS, reg.HS
}
