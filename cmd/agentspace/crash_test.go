package main

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Crash safety: the real binary is killed with SIGKILL while 10 senders are
// sending with txnIds, restarted on the same data and checked: every send
// that was answered 200 is stored exactly once and is visible in /messages,
// /sync and /context; retrying any txnId after the restart returns the
// original event (or, for requests that never got an answer, stores it
// exactly once); the database passes its engine's integrity check and the
// schema invariants of checkInvariants, both on the killed files and at
// the end.
//
// CRASH_ROUNDS (default 5) sets the number of kill/restart rounds and
// CRASH_SEED the random seed (logged, so a failing run can be repeated).

const (
	crashSenders   = 10
	crashPerSender = 80 // per round: 800 messages fit in one /sync timeline (limit 1000)
)

func crashRounds(t *testing.T) int {
	if v := os.Getenv("CRASH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("CRASH_ROUNDS=%q", v)
		}
		return n
	}
	return 5
}

func crashRand(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("CRASH_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CRASH_SEED=%q", v)
		}
		seed = n
	}
	t.Logf("CRASH_SEED=%d", seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

func TestCrashSafetySQLite(t *testing.T) {
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "agentspace.db")
	runCrashRounds(t, crashEngine{
		env: []string{"DB_PATH=" + dbPath},
		// The killed process's files, opened read-only before the restart.
		checkCrashed: func(t *testing.T) { checkSQLiteIntegrity(t, dbPath) },
	})
}

func TestCrashSafetyPostgres(t *testing.T) {
	dbURL, db := freshPostgres(t)
	dir := t.TempDir()
	runCrashRounds(t, crashEngine{
		env: []string{"DATABASE_URL=" + dbURL, "DB_PATH=" + filepath.Join(dir, "agentspace.db")},
		checkCrashed: func(t *testing.T) {
			n := checkPostgresIntegrity(t, db)
			t.Logf("amcheck: %d B-tree indexes verified", n)
		},
	})
}

// crashEngine is what differs between the database engines.
type crashEngine struct {
	env          []string
	checkCrashed func(t *testing.T) // run while no server process is running
}

// crashState is what the senders were told, across all rounds.
type crashState struct {
	mu      sync.Mutex
	acked   map[string]string // txnId → event_id of every send answered 200
	round   map[string]int    // txnId → round it was first sent in
	unknown map[string]bool   // txnIds in flight when the server died (no answer)
}

func (cs *crashState) ackedOfRound(r int) map[string]string {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := map[string]string{}
	for txn, ev := range cs.acked {
		if cs.round[txn] == r {
			out[txn] = ev
		}
	}
	return out
}

func runCrashRounds(t *testing.T, eng crashEngine) {
	start := time.Now()
	rng := crashRand(t)
	rounds := crashRounds(t)

	p := startLiveProc(t, eng.env...)
	owner := registerUser(t, p.URL, "owner")
	observer := registerUser(t, p.URL, "observer")
	senders := make([]*mxClient, crashSenders)
	for i := range senders {
		senders[i] = registerUser(t, p.URL, fmt.Sprintf("sender%d", i))
	}
	roomID := owner.must(t, 200, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"})["room_id"].(string)
	for _, c := range append([]*mxClient{observer}, senders...) {
		c.must(t, 200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), map[string]any{})
	}
	clients := append([]*mxClient{owner, observer}, senders...)
	setBase := func(base string) {
		for _, c := range clients {
			c.base = base
		}
	}

	cs := &crashState{acked: map[string]string{}, round: map[string]int{}, unknown: map[string]bool{}}
	sendPath := func(txn string) string {
		return "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + txn
	}
	content := func(txn string) map[string]any { return map[string]any{"msgtype": "m.text", "body": txn} }
	// sender i's client: by txn prefix "r<round>-s<i>-".
	senderOf := map[string]*mxClient{}

	var totalInFlight, totalAcked int
	for r := 0; r < rounds; r++ {
		// The observer's position before the round: its incremental /sync
		// after the restart must hold every event of the round.
		since := observer.must(t, 200, "GET", "/_matrix/client/v3/sync?timeout=0&filter="+
			url.QueryEscape(`{"room":{"timeline":{"limit":1}}}`), nil)["next_batch"].(string)

		// Kill once a random number of sends has been answered, so the
		// kill lands while the senders are busy.
		killAfter := int64(1 + rng.IntN(crashSenders*crashPerSender-crashSenders))
		var answered, inFlight atomic.Int64
		killed := make(chan struct{})
		var killOnce sync.Once
		var wg sync.WaitGroup
		var failMu sync.Mutex
		var failures []string
		for i, c := range senders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; n < crashPerSender; n++ {
					txn := fmt.Sprintf("r%d-s%d-n%d", r, i, n)
					select {
					case <-killed:
						return
					default:
					}
					cs.mu.Lock()
					cs.round[txn] = r
					senderOf[txn] = c
					cs.mu.Unlock()
					inFlight.Add(1)
					status, out, err := c.do("PUT", sendPath(txn), content(txn))
					inFlight.Add(-1)
					switch {
					case err != nil:
						// No answer: the server died under the request.
						cs.mu.Lock()
						cs.unknown[txn] = true
						cs.mu.Unlock()
						return
					case status != 200:
						failMu.Lock()
						failures = append(failures, fmt.Sprintf("%s: %d %v", txn, status, out))
						failMu.Unlock()
						return
					}
					ev, _ := out["event_id"].(string)
					cs.mu.Lock()
					cs.acked[txn] = ev
					cs.mu.Unlock()
					if answered.Add(1) == killAfter {
						killOnce.Do(func() {
							if j := rng.IntN(3); j > 0 {
								time.Sleep(time.Duration(j) * time.Millisecond)
							}
							totalInFlight += int(inFlight.Load())
							p.kill()
							close(killed)
						})
					}
				}
			}()
		}
		wg.Wait()
		killOnce.Do(func() { p.kill(); close(killed) }) // all sends finished first (not expected)
		if len(failures) > 0 {
			t.Fatalf("round %d: sends refused before the kill: %v\nserver log:\n%s", r, failures, p.log.String())
		}
		roundAcked := cs.ackedOfRound(r)
		totalAcked += len(roundAcked)

		// The files the killed process left behind must be consistent.
		eng.checkCrashed(t)

		p = startLiveProc(t, eng.env...)
		setBase(p.URL)

		// Requests that got no answer are retried with the same txnId: each
		// is stored exactly once, whether or not it was committed before the kill.
		cs.mu.Lock()
		var retry []string
		for txn := range cs.unknown {
			if cs.round[txn] == r {
				retry = append(retry, txn)
			}
		}
		cs.mu.Unlock()
		for _, txn := range retry {
			out := senderOf[txn].must(t, 200, "PUT", sendPath(txn), content(txn))
			cs.mu.Lock()
			cs.acked[txn] = out["event_id"].(string)
			delete(cs.unknown, txn)
			cs.mu.Unlock()
		}
		// Retries of answered sends return the original event.
		parallelEach(t, mapKeys(roundAcked), 8, func(txn string) error {
			status, out, err := senderOf[txn].do("PUT", sendPath(txn), content(txn))
			if err != nil || status != 200 {
				return fmt.Errorf("retry %s: %d %v %v", txn, status, out, err)
			}
			if out["event_id"] != roundAcked[txn] {
				return fmt.Errorf("retry %s after restart: event_id %v, originally %s", txn, out["event_id"], roundAcked[txn])
			}
			return nil
		})
		all := cs.ackedOfRound(r)
		verifyRoundSync(t, observer, roomID, since, r, all)
		verifyMessages(t, observer, roomID, cs)
		verifyContext(t, observer, roomID, all, rng)
		t.Logf("round %d: SIGKILL after %d answered sends; %d acked before the kill, %d unanswered retried after the restart; verified",
			r, killAfter, len(roundAcked), len(retry))
	}
	p.stop()
	eng.checkCrashed(t)
	t.Logf("%d rounds survived: %d sends answered 200 before a SIGKILL, %d in flight at the kills; all stored exactly once (%.1fs)",
		rounds, totalAcked, totalInFlight, time.Since(start).Seconds())
}

// verifyRoundSync checks the observer's incremental /sync from before round
// r: every acknowledged send of the round exactly once, nothing else of the round.
func verifyRoundSync(t *testing.T, c *mxClient, roomID, since string, r int, acked map[string]string) {
	t.Helper()
	q := url.Values{"since": {since}, "timeout": {"0"}, "filter": {`{"room":{"timeline":{"limit":1000}}}`}}
	resp := c.must(t, 200, "GET", "/_matrix/client/v3/sync?"+q.Encode(), nil)
	rooms, _ := resp["rooms"].(map[string]any)
	join, _ := rooms["join"].(map[string]any)
	room, _ := join[roomID].(map[string]any)
	tl, _ := room["timeline"].(map[string]any)
	if limited, _ := tl["limited"].(bool); limited {
		t.Fatalf("round %d: /sync timeline limited; more than 1000 events in a round", r)
	}
	seen := map[string]int{}
	prefix := fmt.Sprintf("r%d-", r)
	for _, e := range decodeEvents(tl["events"]) {
		if e.Type != "m.room.message" {
			continue
		}
		seen[e.EventID]++
		if len(e.Content.Body) >= len(prefix) && e.Content.Body[:len(prefix)] == prefix {
			if want, ok := acked[e.Content.Body]; !ok {
				t.Errorf("round %d: /sync has %s (%s), which was never acknowledged", r, e.EventID, e.Content.Body)
			} else if want != e.EventID {
				t.Errorf("round %d: /sync has %s as %s, acknowledged as %s", r, e.Content.Body, e.EventID, want)
			}
		}
	}
	for txn, ev := range acked {
		if seen[ev] != 1 {
			t.Errorf("round %d: acknowledged %s (%s) appears %d times in /sync", r, txn, ev, seen[ev])
		}
	}
}

// verifyMessages pages through the whole room: every acknowledged send of
// every round exactly once, and no message that was never acknowledged.
func verifyMessages(t *testing.T, c *mxClient, roomID string, cs *crashState) {
	t.Helper()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	seenID := map[string]int{}
	for _, e := range allMessages(t, c, roomID) {
		seenID[e.EventID]++
		if want, ok := cs.acked[e.Content.Body]; !ok {
			t.Errorf("/messages has %s (%q), which was never acknowledged", e.EventID, e.Content.Body)
		} else if want != e.EventID {
			t.Errorf("/messages has %q as %s, acknowledged as %s", e.Content.Body, e.EventID, want)
		}
	}
	for txn, ev := range cs.acked {
		if seenID[ev] != 1 {
			t.Errorf("acknowledged %s (%s) appears %d times in /messages", txn, ev, seenID[ev])
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// verifyContext asks /context for up to 40 acknowledged events of the round.
func verifyContext(t *testing.T, c *mxClient, roomID string, acked map[string]string, rng *rand.Rand) {
	t.Helper()
	txns := mapKeys(acked)
	rng.Shuffle(len(txns), func(i, j int) { txns[i], txns[j] = txns[j], txns[i] })
	if len(txns) > 40 {
		txns = txns[:40]
	}
	parallelEach(t, txns, 4, func(txn string) error {
		ev := acked[txn]
		status, out, err := c.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/context/"+url.PathEscape(ev)+"?limit=10", nil)
		if err != nil || status != 200 {
			return fmt.Errorf("/context %s: %d %v %v", ev, status, out, err)
		}
		evs := decodeEvents([]any{out["event"]})
		if len(evs) != 1 || evs[0].EventID != ev || evs[0].Content.Body != txn {
			return fmt.Errorf("/context %s returned %v", ev, out["event"])
		}
		for _, key := range []string{"events_before", "events_after"} {
			for _, e := range decodeEvents(out[key]) {
				if e.EventID == ev {
					return fmt.Errorf("/context %s: the event is repeated in %s", ev, key)
				}
			}
		}
		return nil
	})
}

// parallelEach runs fn on every item with n workers; the first error fails the test.
func parallelEach(t *testing.T, items []string, n int, fn func(string) error) {
	t.Helper()
	ch := make(chan string)
	errs := make(chan error, len(items))
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range ch {
				if err := fn(it); err != nil {
					errs <- err
				}
			}
		}()
	}
	for _, it := range items {
		ch <- it
	}
	close(ch)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func mapKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
