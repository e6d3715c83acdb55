package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentspace/agentspace/storage"
)

const wsClientDir = "testdata/wsclient"

// seedUser creates a user with an access token of our choosing directly in
// a (new) data directory's database, before the server starts.
func seedUser(t *testing.T, dataDir, localpart, token string) {
	t.Helper()
	ctx := context.Background()
	db, err := storage.Open(ctx, storage.Options{SQLitePath: filepath.Join(dataDir, "agentspace.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	userID := "@" + localpart + ":localhost"
	err = db.Write(ctx, func(tx *storage.Tx) error {
		now := time.Now().UnixMilli()
		if err := tx.InsertUser(ctx, &storage.User{UserID: userID, Localpart: localpart, CreatedTS: now}); err != nil {
			return err
		}
		if err := tx.UpsertDevice(ctx, &storage.Device{UserID: userID, DeviceID: "DEV" + strings.ToUpper(localpart), CreatedTS: now}); err != nil {
			return err
		}
		return tx.InsertAccessToken(ctx, &storage.AccessToken{TokenHash: storage.HashToken(token), UserID: userID,
			DeviceID: "DEV" + strings.ToUpper(localpart), CreatedTS: now})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// apiCall makes one JSON request to the server and decodes the answer.
func apiCall(t *testing.T, method, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

// TestBridgeWSNodeSeedExample runs the WebSocket join example of the
// original design unchanged (testdata/wsclient/seed-join-example.js) with
// the ws npm package: it joins 'demo-room' with the token 'AGENT_TOKEN' and
// prints what it receives, including a message posted while it listens.
func TestBridgeWSNodeSeedExample(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	node := nodeFromNPM(t, wsClientDir)
	dataDir := t.TempDir()
	seedUser(t, dataDir, "agent", "AGENT_TOKEN") // the example's token, literally
	seedUser(t, dataDir, "alice", "alice-token")
	port := freePort(t)
	srv := startServerProc(t, dataDir, port)
	if status, out := apiCall(t, "POST", srv.URL+"/api/rooms", "alice-token", map[string]any{"name": "demo-room", "public": true}); status != 200 {
		t.Fatalf("creating demo-room: %d %v", status, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "run.js")
	cmd.Dir = wsClientDir
	cmd.Env = append(os.Environ(), fmt.Sprintf("AGENTSPACE_WS_URL=ws://127.0.0.1:%d/ws", port), "WAIT_MS=60000")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		lines = append(lines, line)
		if strings.HasPrefix(line, "Received: ") && strings.Contains(line, `"type":"joined"`) {
			if status, out := apiCall(t, "POST", srv.URL+"/api/rooms/demo-room/messages", "alice-token",
				map[string]any{"content": "hello from the gateway"}); status != 200 {
				t.Fatalf("posting: %d %v", status, out)
			}
		}
	}
	err = cmd.Wait()
	t.Logf("node output:\n%s\n%s", strings.Join(lines, "\n"), stderr.String())
	if err != nil {
		t.Fatalf("node: %v\nserver log:\n%s", err, srv.output.String())
	}
	if len(lines) != 2 {
		t.Fatalf("want two lines (joined, message), got %d", len(lines))
	}
	var joined, msg map[string]any
	if err := json.Unmarshal([]byte(strings.TrimPrefix(lines[0], "Received: ")), &joined); err != nil || joined["type"] != "joined" || joined["room"] != "demo-room" {
		t.Errorf("first line: %s", lines[0])
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(lines[1], "Received: ")), &msg); err != nil {
		t.Fatalf("second line: %s", lines[1])
	}
	if msg["type"] != "message" || msg["room"] != "demo-room" || msg["senderId"] != "@alice:localhost" ||
		msg["senderName"] != "alice" || msg["content"] != "hello from the gateway" || msg["eventId"] == "" || msg["timestamp"] == nil {
		t.Errorf("message frame: %s", lines[1])
	}
	srv.stop()
}

// TestBridgesStatusCommand: "agentspace bridges status" shows a webhook
// whose receiver is unreachable, with its backlog and error, and never its
// secret URL.
func TestBridgesStatusCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	dataDir := t.TempDir()
	seedUser(t, dataDir, "admin", "admin-token")
	seedUser(t, dataDir, "alice", "alice-token")
	dead := freePort(t) // nothing listens there
	cfgPath := filepath.Join(dataDir, "agentspace.yaml")
	cfgYAML := fmt.Sprintf(`admin_users: [admin]
app_service_retry: {min: 50ms, max: 200ms}
bridges:
  webhooks:
    - name: team-slack
      kind: slack
      rooms: ["#ops:localhost"]
      url: http://127.0.0.1:%d/services/T000/B000/TOPSECRET
`, dead)
	if err := os.WriteFile(cfgPath, []byte(cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	srv := startServerProcArgs(t, dataDir, port, []string{"-config", cfgPath})
	if status, out := apiCall(t, "POST", srv.URL+"/api/rooms", "alice-token", map[string]any{"name": "ops", "public": true}); status != 200 {
		t.Fatalf("creating #ops: %d %v", status, out)
	}
	for i := range 3 {
		if status, out := apiCall(t, "POST", srv.URL+"/api/rooms/ops/messages", "alice-token", map[string]any{"content": fmt.Sprint("m", i)}); status != 200 {
			t.Fatalf("posting: %d %v", status, out)
		}
	}
	var out, errOut bytes.Buffer
	deadline := time.Now().Add(15 * time.Second)
	for {
		out.Reset()
		errOut.Reset()
		code := run([]string{"bridges", "status", "--server", srv.URL, "--token", "admin-token"}, &out, &errOut)
		if code != 0 {
			t.Fatalf("bridges status: exit %d: %s", code, errOut.String())
		}
		if strings.Contains(out.String(), "connection refused") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no error shown:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	text := out.String()
	t.Logf("bridges status:\n%s", text)
	for _, want := range []string{"NAME", "BACKLOG", "LAG", "team-slack", "webhook", "slack", fmt.Sprintf("http://127.0.0.1:%d/REDACTED", dead), "POST http://127.0.0.1"} {
		if !strings.Contains(text, want) {
			t.Errorf("status output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "TOPSECRET") {
		t.Errorf("the webhook URL leaked:\n%s", text)
	}
	fields := strings.Fields(strings.Split(text, "\n")[1])
	if len(fields) < 6 || fields[4] != "3" {
		t.Errorf("backlog column: %q", fields)
	}

	out.Reset()
	if code := run([]string{"bridges", "status", "--server", srv.URL, "--token", "admin-token", "--json"}, &out, &errOut); code != 0 {
		t.Fatalf("--json: %s", errOut.String())
	}
	var js struct {
		Bridges []map[string]any `json:"bridges"`
	}
	if err := json.Unmarshal(out.Bytes(), &js); err != nil || len(js.Bridges) != 1 || js.Bridges[0]["backlog"] != float64(3) || js.Bridges[0]["lag_ms"].(float64) <= 0 {
		t.Errorf("--json: %s (%v)", out.String(), err)
	}
	errOut.Reset()
	if code := run([]string{"bridges", "status", "--server", srv.URL, "--token", "alice-token"}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "M_FORBIDDEN") {
		t.Errorf("non-admin: exit %d: %s", code, errOut.String())
	}
	srv.stop() // the log is complete (and no longer written) once the process has exited
	if log := srv.output.String(); strings.Contains(log, "TOPSECRET") || !strings.Contains(log, "delivery failed") {
		t.Errorf("the server log must report the failures without the webhook URL:\n%s", log)
	}
}

// startServerProcArgs is startServerProc with "serve" arguments (e.g.
// -config FILE, which has no environment variable).
func startServerProcArgs(t *testing.T, dataDir string, port int, args []string) *serverProc {
	t.Helper()
	cmd := exec.Command(agentspaceBinary(t), append([]string{"serve"}, args...)...)
	cmd.Env = append(os.Environ(),
		"PORT="+strconv.Itoa(port),
		"BIND_ADDRESS=127.0.0.1",
		"DB_PATH="+filepath.Join(dataDir, "agentspace.db"),
		"RATE_LIMIT=off",
		"BCRYPT_COST=4",
		"LOG_LEVEL=warn",
	)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serverProc{t: t, cmd: cmd, URL: fmt.Sprintf("http://127.0.0.1:%d", port), output: out, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { p.kill() })
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(p.URL + "/_matrix/client/versions"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case err := <-p.done:
			t.Fatalf("server exited during start-up: %v\n%s", err, out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("server not ready within 20s\n%s", out.String())
	return nil
}

// TestBenchWSSmoke runs a small "agentspace bench ws".
func TestBenchWSSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	srv := startServerProc(t, t.TempDir(), freePort(t))
	jsonPath := filepath.Join(t.TempDir(), "ws.json")
	var out, errOut bytes.Buffer
	if code := run([]string{"bench", "ws", "--url", srv.URL, "--clients", "20", "--messages", "20", "--interval", "5ms", "--json", jsonPath}, &out, &errOut); code != 0 {
		t.Fatalf("bench ws: exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	var res wsBenchResult
	data, err := os.ReadFile(jsonPath)
	if err != nil || json.Unmarshal(data, &res) != nil {
		t.Fatalf("json report: %v %s", err, data)
	}
	if res.Deliveries != 400 || res.Missing != 0 || res.Duplicates != 0 || res.OrderViolations != 0 || res.Latency.P99Ms <= 0 {
		t.Errorf("result: %+v", res)
	}
	if !strings.Contains(out.String(), "send -> receive at each client: p50") {
		t.Errorf("report:\n%s", out.String())
	}
}
