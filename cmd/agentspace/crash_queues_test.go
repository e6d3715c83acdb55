package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Crash safety of the delivery queues: with an appservice (whose bot has
// joined the room) and an http webhook on the room, the server is killed
// with SIGKILL while senders are sending, several rounds, and restarted on
// the same data. At the end every message stored in the room (which
// includes every send answered 200) has reached both receivers at least
// once, and the first arrivals are in the room's stream order: duplicates
// are allowed (at-least-once), gaps and reordering are not. The receivers
// also refuse one request in eight with a 503, so the retry path runs too.

const (
	queueCrashRounds    = 3 // CRASH_ROUNDS overrides
	queueCrashSenders   = 4
	queueCrashPerSender = 60
)

// queueReceiver records the m.room.message event ids of one room in arrival order.
type queueReceiver struct {
	mu       sync.Mutex
	order    []string
	requests int
	refused  int
}

func (q *queueReceiver) add(ids []string) {
	q.mu.Lock()
	q.order = append(q.order, ids...)
	q.mu.Unlock()
}

// refuse answers every eighth request with a 503 (and records nothing).
func (q *queueReceiver) refuse(w http.ResponseWriter) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.requests++
	if q.requests%8 == 0 {
		q.refused++
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return true
	}
	return false
}

func (q *queueReceiver) snapshot() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Clone(q.order)
}

// firstArrivals returns the ids in order of first arrival and the number of repeats.
func firstArrivals(order []string) (first []string, dups int) {
	seen := map[string]bool{}
	for _, id := range order {
		if seen[id] {
			dups++
			continue
		}
		seen[id] = true
		first = append(first, id)
	}
	return first, dups
}

func TestCrashSafetyQueuesSQLite(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts the server binary")
	}
	runQueueCrash(t, nil)
}

func TestCrashSafetyQueuesPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts the server binary")
	}
	dbURL, _ := freshPostgres(t)
	runQueueCrash(t, []string{"DATABASE_URL=" + dbURL})
}

func runQueueCrash(t *testing.T, engineEnv []string) {
	start := time.Now()
	rng := crashRand(t)
	rounds := queueCrashRounds
	if os.Getenv("CRASH_ROUNDS") != "" {
		rounds = crashRounds(t)
	}
	dir := t.TempDir()

	// Receivers: the appservice at /as, the webhook at /hook.
	var roomMu sync.Mutex
	roomID := "" // set once the room exists; events of other rooms are ignored
	asRecv, hookRecv := &queueReceiver{}, &queueReceiver{}
	var hsToken string
	var asAuthFailures atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /as/_matrix/app/v1/transactions/{txn}", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+hsToken {
			asAuthFailures.Add(1)
			http.Error(w, `{"errcode":"M_FORBIDDEN"}`, http.StatusForbidden)
			return
		}
		var txn struct {
			Events []msgEvent `json:"events"`
		}
		var raw struct {
			Events []struct {
				RoomID string `json:"room_id"`
			} `json:"events"`
		}
		body, _ := io.ReadAll(r.Body)
		if json.Unmarshal(body, &txn) != nil || json.Unmarshal(body, &raw) != nil || len(raw.Events) != len(txn.Events) {
			http.Error(w, "bad transaction", http.StatusBadRequest)
			return
		}
		if asRecv.refuse(w) {
			return
		}
		roomMu.Lock()
		want := roomID
		roomMu.Unlock()
		var ids []string
		for i, e := range txn.Events {
			if e.Type == "m.room.message" && raw.Events[i].RoomID == want {
				ids = append(ids, e.EventID)
			}
		}
		asRecv.add(ids)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	})
	mux.HandleFunc("POST /hook", func(w http.ResponseWriter, r *http.Request) {
		var m struct {
			Room    string `json:"room"`
			EventID string `json:"event_id"`
		}
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil || m.EventID == "" {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		if r.Header.Get("X-AgentSpace-Signature") == "" {
			http.Error(w, "unsigned", http.StatusUnauthorized)
			return
		}
		if hookRecv.refuse(w) {
			return
		}
		roomMu.Lock()
		want := roomID
		roomMu.Unlock()
		if m.Room == want {
			hookRecv.add([]string{m.EventID})
		}
		w.WriteHeader(http.StatusNoContent)
	})
	recvBase := serveLoopback(t, mux)

	// The registration, written by the real command.
	regPath, asToken, hs := newRegistration(t, dir, "crashq", "crashbot", recvBase+"/as")
	hsToken = hs

	cfgPath := filepath.Join(dir, "agentspace.yaml")
	cfg := fmt.Sprintf(`app_service_retry: {min: 50ms, max: 200ms}
bridges:
  webhooks:
    - name: crash-archive
      kind: http
      rooms: ["#crashq:localhost"]
      url: %s/hook
      secret: crash-secret
`, recvBase)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(dir, "agentspace.db")
	args := []string{"-config", cfgPath}
	env := append([]string{"DB_PATH=" + dbPath, "APPSERVICE_REGISTRATIONS=" + regPath}, engineEnv...)

	p := startLiveProcArgs(t, args, env...)
	owner := registerUser(t, p.URL, "owner")
	senders := make([]*mxClient, queueCrashSenders)
	for i := range senders {
		senders[i] = registerUser(t, p.URL, fmt.Sprintf("qsender%d", i))
	}
	created := owner.must(t, 200, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat", "room_alias_name": "crashq"})
	roomMu.Lock()
	roomID = created["room_id"].(string)
	roomMu.Unlock()
	bot := &mxClient{base: p.URL, token: asToken, userID: "@crashbot:localhost", http: owner.http}
	bot.must(t, 200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
	for _, c := range senders {
		c.must(t, 200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
	}
	clients := append([]*mxClient{owner, bot}, senders...)
	sendPath := func(txn string) string {
		return "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + txn
	}

	acked := map[string]string{} // txnId → event_id of every send answered 200
	var ackMu sync.Mutex
	for r := range rounds {
		killAfter := int64(1 + rng.IntN(queueCrashSenders*queueCrashPerSender-queueCrashSenders))
		var answered atomic.Int64
		killed := make(chan struct{})
		var killOnce sync.Once
		var wg sync.WaitGroup
		for i, c := range senders {
			wg.Go(func() {
				for n := range queueCrashPerSender {
					select {
					case <-killed:
						return
					default:
					}
					txn := fmt.Sprintf("q%d-s%d-n%d", r, i, n)
					status, out, err := c.do("PUT", sendPath(txn), map[string]any{"msgtype": "m.text", "body": txn})
					if err != nil {
						return // the server died under the request
					}
					if status != 200 {
						t.Errorf("%s: %d %v", txn, status, out)
						return
					}
					ackMu.Lock()
					acked[txn], _ = out["event_id"].(string)
					ackMu.Unlock()
					if answered.Add(1) == killAfter {
						killOnce.Do(func() { p.kill(); close(killed) })
					}
				}
			})
		}
		wg.Wait()
		killOnce.Do(func() { p.kill(); close(killed) })
		t.Logf("round %d: killed after %d acknowledged sends; appservice has %d, webhook %d arrivals so far",
			r, killAfter, len(asRecv.snapshot()), len(hookRecv.snapshot()))
		p = startLiveProcArgs(t, args, env...)
		for _, c := range clients {
			c.base = p.URL
		}
	}

	// Every stored message, in stream order (allMessages is newest first).
	stored := allMessages(t, owner, roomID)
	slices.Reverse(stored)
	storedIDs := make([]string, len(stored))
	inRoom := map[string]bool{}
	for i, e := range stored {
		storedIDs[i] = e.EventID
		inRoom[e.EventID] = true
	}
	for txn, ev := range acked {
		if !inRoom[ev] {
			t.Errorf("acknowledged send %s (%s) is not in the room", txn, ev)
		}
	}

	// Wait (bounded) until both receivers hold every stored message.
	deadline := time.Now().Add(20 * time.Second)
	complete := func(q *queueReceiver) bool {
		first, _ := firstArrivals(q.snapshot())
		got := map[string]bool{}
		for _, id := range first {
			got[id] = true
		}
		for _, id := range storedIDs {
			if !got[id] {
				return false
			}
		}
		return true
	}
	for time.Now().Before(deadline) && !(complete(asRecv) && complete(hookRecv)) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, rc := range []struct {
		name string
		q    *queueReceiver
	}{{"appservice", asRecv}, {"webhook", hookRecv}} {
		first, dups := firstArrivals(rc.q.snapshot())
		// Only the room's messages reach the receivers, and in stream order:
		// the first arrivals must be exactly the stored messages, in order.
		if !slices.Equal(first, storedIDs) {
			missing := 0
			got := map[string]bool{}
			for _, id := range first {
				got[id] = true
			}
			for _, id := range storedIDs {
				if !got[id] {
					missing++
				}
			}
			t.Errorf("%s: first arrivals differ from the stream order: %d received, %d stored, %d missing\nfirst 5 received %v\nfirst 5 stored   %v",
				rc.name, len(first), len(storedIDs), missing, first[:min(5, len(first))], storedIDs[:min(5, len(storedIDs))])
		}
		rc.q.mu.Lock()
		t.Logf("%s: %d messages received in stream order, %d duplicate deliveries, %d requests refused with 503",
			rc.name, len(first), dups, rc.q.refused)
		rc.q.mu.Unlock()
	}
	if n := asAuthFailures.Load(); n > 0 {
		t.Errorf("%d appservice transactions without the hs_token", n)
	}
	p.stop()
	if log := p.log.String(); strings.Contains(log, "crash-secret") || strings.Contains(log, recvBase+"/hook") {
		t.Errorf("the server log shows the webhook secret or URL:\n%s", log)
	}
	t.Logf("%d rounds, %d acknowledged sends, %d stored messages, %.1f s", rounds, len(acked), len(storedIDs), time.Since(start).Seconds())
}
