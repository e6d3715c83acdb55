package main

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Several instances on one PostgreSQL database, with the real binary: two
// processes A and B share the database and the data directory (one
// signing.key, created by A). Users on A and B chat in one room while
// observers split over both long-poll /sync; then senders on both write
// with txnIds and A is killed with SIGKILL in the middle. Afterwards every
// send answered 200 is in the room exactly once (read through B), B's
// senders saw no error, B's observers hold every message once in the
// room's order, each event's prev_events is the event before it, and the
// appservice, whose delivery lease A held, gets every message (at least
// once, first arrivals in stream order) from B.

const (
	miObservers      = 20 // split evenly over A and B
	miChatRounds     = 20 // phase 1: one message from A's user and one from B's per round
	miSendersEach    = 3  // phase 2: senders on each instance
	miMessagesEach   = 60 // phase 2: messages per sender
	miLeaseLockSpace = 0x41530002
)

// miObserver long-polls /sync on one instance and records the room's
// m.room.message event ids in arrival order.
type miObserver struct {
	c    *mxClient
	name string

	mu      sync.Mutex
	order   []string
	limited int
	err     error // the error that ended the loop, if any
}

func (o *miObserver) snapshot() ([]string, int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.order), o.limited, o.err
}

// run long-polls until stop is closed or a request fails.
func (o *miObserver) run(roomID, since string, stop <-chan struct{}) {
	filter := url.QueryEscape(`{"room":{"timeline":{"limit":1000}}}`)
	for {
		select {
		case <-stop:
			return
		default:
		}
		status, out, err := o.c.do("GET", "/_matrix/client/v3/sync?timeout=2000&filter="+filter+"&since="+url.QueryEscape(since), nil)
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("/sync: status %d: %v", status, out)
		}
		if err != nil {
			o.mu.Lock()
			o.err = err
			o.mu.Unlock()
			return
		}
		since, _ = out["next_batch"].(string)
		rooms, _ := out["rooms"].(map[string]any)
		join, _ := rooms["join"].(map[string]any)
		room, _ := join[roomID].(map[string]any)
		tl, _ := room["timeline"].(map[string]any)
		var ids []string
		for _, e := range decodeEvents(tl["events"]) {
			if e.Type == "m.room.message" {
				ids = append(ids, e.EventID)
			}
		}
		o.mu.Lock()
		o.order = append(o.order, ids...)
		if lim, _ := tl["limited"].(bool); lim {
			o.limited++
		}
		o.mu.Unlock()
	}
}

// leaseHolders maps each lease lock held in this test's database (its
// second key) to the application_name of the session holding it.
func leaseHolders(t testing.TB, db *sql.DB) map[int64]string {
	t.Helper()
	rows, err := db.Query(`SELECT l.objid::bigint, a.application_name FROM pg_locks l
		JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = $1::bigint::oid
		AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`, miLeaseLockSpace)
	if err != nil {
		t.Fatalf("reading lease holders: %v", err)
	}
	defer rows.Close()
	out := map[int64]string{}
	for rows.Next() {
		var key int64
		var app string
		if err := rows.Scan(&key, &app); err != nil {
			t.Fatal(err)
		}
		out[key] = app
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// withAppName adds application_name to a postgres:// URL, so a session can
// be traced to the instance that opened it.
func withAppName(t testing.TB, dbURL, name string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	return u.String()
}

func TestMultiInstanceKill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills two server binaries")
	}
	dbURL, db := freshPostgres(t) // skips (or fails in CI) without PostgreSQL
	begin := time.Now()
	rng := crashRand(t)
	dir := t.TempDir()

	// The appservice receiver.
	var roomMu sync.Mutex
	roomID := ""
	asRecv := &queueReceiver{}
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
			Events []struct {
				EventID string `json:"event_id"`
				Type    string `json:"type"`
				RoomID  string `json:"room_id"`
			} `json:"events"`
		}
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &txn); err != nil {
			http.Error(w, "bad transaction", http.StatusBadRequest)
			return
		}
		roomMu.Lock()
		want := roomID
		roomMu.Unlock()
		var ids []string
		for _, e := range txn.Events {
			if e.Type == "m.room.message" && e.RoomID == want {
				ids = append(ids, e.EventID)
			}
		}
		asRecv.add(ids)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	})
	recvBase := serveLoopback(t, mux)

	// One registration file, written by the real command, for both instances.
	regPath, asToken, hs := newRegistration(t, dir, "mi", "mibot", recvBase+"/as")
	hsToken = hs
	cfgPath := filepath.Join(dir, "agentspace.yaml")
	if err := os.WriteFile(cfgPath, []byte("app_service_retry: {min: 50ms, max: 200ms}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-config", cfgPath}
	env := func(name string) []string {
		return []string{"DB_PATH=" + filepath.Join(dir, "agentspace.db"), "DATABASE_URL=" + withAppName(t, dbURL, name),
			"APPSERVICE_REGISTRATIONS=" + regPath}
	}

	// A first (it creates signing.key in the shared directory), then B.
	a := startLiveProcArgs(t, args, env("mi-A")...)
	keyA, err := os.ReadFile(filepath.Join(dir, "signing.key"))
	if err != nil {
		t.Fatalf("A did not create signing.key in the shared data dir: %v", err)
	}
	b := startLiveProcArgs(t, args, env("mi-B")...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of A:\n%s\nlog of B:\n%s", a.log.String(), b.log.String())
		}
	})
	if keyB, err := os.ReadFile(filepath.Join(dir, "signing.key")); err != nil || string(keyB) != string(keyA) {
		t.Fatalf("signing.key changed when B started (%v)", err)
	}

	// Users: the owner on A, a chatter on each instance, observers split.
	owner := registerUser(t, a.URL, "owner")
	chatA := registerUser(t, a.URL, "chat_a")
	chatB := registerUser(t, b.URL, "chat_b")
	created := owner.must(t, 200, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"})
	roomMu.Lock()
	roomID = created["room_id"].(string)
	roomMu.Unlock()
	joinPath := "/_matrix/client/v3/join/" + url.PathEscape(roomID)
	bot := &mxClient{base: b.URL, token: asToken, userID: "@mibot:localhost", http: owner.http}
	bot.must(t, 200, "POST", joinPath, map[string]any{})
	chatA.must(t, 200, "POST", joinPath, map[string]any{})
	chatB.must(t, 200, "POST", joinPath, map[string]any{})

	obsTransport := &http.Transport{MaxIdleConnsPerHost: miObservers}
	t.Cleanup(obsTransport.CloseIdleConnections)
	observers := make([]*miObserver, miObservers)
	sinces := make([]string, miObservers)
	for i := range observers {
		inst, name := a, "A"
		if i%2 == 1 {
			inst, name = b, "B"
		}
		c := registerUser(t, inst.URL, fmt.Sprintf("obs%d", i))
		c.http = &http.Client{Transport: obsTransport, Timeout: 30 * time.Second}
		c.must(t, 200, "POST", joinPath, map[string]any{})
		resp := c.must(t, 200, "GET", "/_matrix/client/v3/sync?timeout=0", nil)
		sinces[i], _ = resp["next_batch"].(string)
		observers[i] = &miObserver{c: c, name: fmt.Sprintf("observer %d on %s", i, name)}
	}
	stopObs := make(chan struct{})
	var obsWG sync.WaitGroup
	for i, o := range observers {
		obsWG.Go(func() { o.run(roomID, sinces[i], stopObs) })
	}
	defer func() {
		select {
		case <-stopObs:
		default:
			close(stopObs)
		}
		obsWG.Wait()
	}()
	sendPath := func(txn string) string {
		return "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + txn
	}

	// Phase 1: A's user and B's user chat; every observer gets each message
	// once, all in one order.
	var chat []string
	for r := range miChatRounds {
		for _, c := range []*mxClient{chatA, chatB} {
			txn := fmt.Sprintf("chat-%s-%d", c.userID[1:7], r)
			resp := c.must(t, 200, "PUT", sendPath(txn), map[string]any{"msgtype": "m.text", "body": txn})
			chat = append(chat, resp["event_id"].(string))
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		done := true
		for _, o := range observers {
			if got, _, err := o.snapshot(); len(got) < len(chat) {
				if err != nil {
					t.Fatalf("%s: %v", o.name, err)
				}
				done = false
			}
		}
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, o := range observers {
		got, limited, _ := o.snapshot()
		if !slices.Equal(got, chat) || limited > 0 {
			t.Fatalf("phase 1: %s received %d messages (limited %d times), want the %d sent, in the order sent\ngot  %v\nwant %v",
				o.name, len(got), limited, len(chat), got, chat)
		}
	}
	t.Logf("phase 1: %d messages from A and B reached all %d observers once, in one order (%.1f s)", len(chat), miObservers, time.Since(begin).Seconds())

	// Before the kill: A holds the appservice's delivery lease.
	before := leaseHolders(t, db)
	if len(before) == 0 {
		t.Fatal("no delivery lease is held")
	}
	for key, app := range before {
		if app != "mi-A" {
			t.Fatalf("lease %d is held by %q, want mi-A (started first)", key, app)
		}
	}

	// Phase 2: senders on both instances; A is killed mid-load. A's senders
	// move to B and retry their request in flight with the same txnId.
	type ack struct{ txn, eventID, via string }
	var ackMu sync.Mutex
	var acks []ack
	total := 2 * miSendersEach * miMessagesEach
	killAfter := int64(total/4 + rng.IntN(total/4))
	var answered atomic.Int64
	killed := make(chan struct{})
	var killedAt time.Time
	var killOnce sync.Once
	killA := func() {
		killOnce.Do(func() {
			a.kill()
			killedAt = time.Now()
			close(killed)
		})
	}
	var bErrors []string
	var bMaxLatency time.Duration
	var retriedOnB atomic.Int64
	var wg sync.WaitGroup
	for s := range 2 * miSendersEach {
		onA := s < miSendersEach
		c := registerUser(t, b.URL, fmt.Sprintf("sender%d", s))
		c.must(t, 200, "POST", joinPath, map[string]any{})
		if onA {
			c.base = a.URL
		}
		wg.Go(func() {
			for n := 0; n < miMessagesEach; n++ {
				txn := fmt.Sprintf("load-s%d-n%d", s, n)
				began := time.Now()
				status, resp, err := c.do("PUT", sendPath(txn), map[string]any{"msgtype": "m.text", "body": txn})
				took := time.Since(began)
				if c.base == a.URL && (err != nil || status >= 500) {
					// A is gone (or going): continue on B with the same txnId.
					<-killed
					c.base = b.URL
					retriedOnB.Add(1)
					n--
					continue
				}
				via := "B"
				if c.base == a.URL {
					via = "A"
				}
				if err != nil || status != 200 {
					ackMu.Lock()
					bErrors = append(bErrors, fmt.Sprintf("%s on %s: %d %v %v", txn, via, status, resp, err))
					ackMu.Unlock()
					return
				}
				ackMu.Lock()
				acks = append(acks, ack{txn, resp["event_id"].(string), via})
				if via == "B" {
					bMaxLatency = max(bMaxLatency, took)
				}
				ackMu.Unlock()
				if answered.Add(1) == killAfter {
					killA()
				}
			}
		})
	}
	wg.Wait()
	killA()
	if len(bErrors) > 0 {
		t.Fatalf("sends through B failed (B must keep serving while A dies):\n%s", strings.Join(bErrors, "\n"))
	}
	loadEnd := time.Now()

	// Every acknowledged send is in the room exactly once, read through B.
	// A commit of A that was not announced before the kill (or a stream
	// position A took and never used) holds B's watermark back until B's
	// fallback poll resyncs (about 1-1.5 s): until then B does not show
	// events past it, even its own. So read until every acknowledged send
	// is there, within a bound.
	reader := registerUser(t, b.URL, "reader")
	reader.must(t, 200, "POST", joinPath, map[string]any{})
	var stored []msgEvent
	for {
		stored = allMessages(t, reader, roomID)
		n := 0
		for _, e := range stored {
			if strings.HasPrefix(e.Content.Body, "load-") {
				n++
			}
		}
		if n >= total || time.Since(loadEnd) > 10*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	readableAfter := time.Since(killedAt)
	slices.Reverse(stored) // stream order
	storedIDs := make([]string, len(stored))
	byBody := map[string]int{}
	inRoom := map[string]bool{}
	for i, e := range stored {
		storedIDs[i] = e.EventID
		byBody[e.Content.Body]++
		inRoom[e.EventID] = true
	}
	for body, n := range byBody {
		if n != 1 {
			t.Errorf("message %q is stored %d times", body, n)
		}
	}
	ackedVia := map[string]int{}
	for _, k := range acks {
		ackedVia[k.via]++
		if !inRoom[k.eventID] {
			t.Errorf("acknowledged send %s (%s, via %s) is not in the room", k.txn, k.eventID, k.via)
		}
		if byBody[k.txn] != 1 {
			t.Errorf("acknowledged send %s is stored %d times", k.txn, byBody[k.txn])
		}
	}
	for s := range 2 * miSendersEach {
		for n := range miMessagesEach {
			if txn := fmt.Sprintf("load-s%d-n%d", s, n); byBody[txn] != 1 {
				t.Errorf("send %s (every one was finally answered 200) is stored %d times", txn, byBody[txn])
			}
		}
	}
	if !slices.Equal(storedIDs[:len(chat)], chat) {
		t.Errorf("the phase-1 messages are not the first %d in the room", len(chat))
	}

	// Linear history: each event's prev_events is exactly the event before it.
	rows, err := db.Query(`SELECT event_id, pdu_json FROM events WHERE room_id = $1 ORDER BY pos`, roomID)
	if err != nil {
		t.Fatal(err)
	}
	prev, nEvents, forks := "", 0, 0
	for rows.Next() {
		var eventID, pdu string
		if err := rows.Scan(&eventID, &pdu); err != nil {
			t.Fatal(err)
		}
		var p struct {
			PrevEvents []string `json:"prev_events"`
		}
		if err := json.Unmarshal([]byte(pdu), &p); err != nil {
			t.Fatalf("event %s: %v", eventID, err)
		}
		want := []string{prev}
		if prev == "" {
			want = []string{}
		}
		if !slices.Equal(p.PrevEvents, want) {
			forks++
			if forks <= 5 {
				t.Errorf("event %s (#%d): prev_events %v, want %v", eventID, nEvents, p.PrevEvents, want)
			}
		}
		prev = eventID
		nEvents++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if forks > 0 {
		t.Errorf("history not linear: %d of %d events do not follow the previous one", forks, nEvents)
	}

	// B's observers hold every message exactly once, in the room's order;
	// A's hold a prefix of it (they stopped when A died).
	deadline = time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		done := true
		for i, o := range observers {
			if got, _, _ := o.snapshot(); i%2 == 1 && len(got) < len(storedIDs) {
				done = false
			}
		}
		if done {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stopObs)
	obsWG.Wait()
	for i, o := range observers {
		got, limited, err := o.snapshot()
		switch {
		case i%2 == 1 && (err != nil || limited > 0 || !slices.Equal(got, storedIDs)):
			t.Errorf("%s: %d messages (limited %d times, err %v), want all %d once in the room's order", o.name, len(got), limited, err, len(storedIDs))
		case i%2 == 0 && (len(got) > len(storedIDs) || !slices.Equal(got, storedIDs[:len(got)])):
			t.Errorf("%s: its %d messages are not a prefix of the room's order", o.name, len(got))
		}
	}

	// Delivery moves to B: the lease passes to B and the appservice gets
	// every message, first arrivals in stream order.
	deadline = time.Now().Add(20 * time.Second)
	complete := func() bool {
		first, _ := firstArrivals(asRecv.snapshot())
		return len(first) >= len(storedIDs)
	}
	for time.Now().Before(deadline) && !complete() {
		time.Sleep(20 * time.Millisecond)
	}
	asDone := time.Since(killedAt)
	after := leaseHolders(t, db)
	for key := range before {
		if after[key] != "mi-B" {
			t.Errorf("after A died lease %d is held by %q, want mi-B", key, after[key])
		}
	}
	first, dups := firstArrivals(asRecv.snapshot())
	if !slices.Equal(first, storedIDs) {
		got := map[string]bool{}
		for _, id := range first {
			got[id] = true
		}
		missing := 0
		for _, id := range storedIDs {
			if !got[id] {
				missing++
			}
		}
		t.Errorf("appservice: first arrivals differ from the stream order: %d received, %d stored, %d missing", len(first), len(storedIDs), missing)
	}
	if n := asAuthFailures.Load(); n > 0 {
		t.Errorf("%d appservice transactions without the hs_token", n)
	}

	vias := make([]string, 0, len(ackedVia))
	for v, n := range ackedVia {
		vias = append(vias, fmt.Sprintf("%s: %d", v, n))
	}
	sort.Strings(vias)
	t.Logf("phase 2: A killed after %d of %d sends; acknowledged %v; %d in-flight sends retried on B; slowest send on B %s; "+
		"%d messages stored, %d events linear; appservice had all (%d duplicates) %.1f s after the kill; load ended %.1f s after the kill; all readable on B %.1f s after the kill; total %.1f s",
		killAfter, total, vias, retriedOnB.Load(), bMaxLatency.Round(time.Millisecond), len(storedIDs), nEvents, dups,
		asDone.Seconds(), loadEnd.Sub(killedAt).Seconds(), readableAfter.Seconds(), time.Since(begin).Seconds())
	b.stop()
}
