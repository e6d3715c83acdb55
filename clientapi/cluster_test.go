package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/internal/testdb"
	"github.com/agentspace/agentspace/storage"
)

// newTestCluster starts two servers on one fresh PostgreSQL database, as
// two instances behind a load balancer; it skips on SQLite.
func newTestCluster(t *testing.T) (a, b *testServer) {
	t.Helper()
	if !testdb.Postgres() {
		t.Skip("several instances need PostgreSQL")
	}
	a = newTestServer(t)
	b = newTestServer(t, func(c *config.Config) { c.Database.URL = a.cfg.Database.URL })
	if a.cluster == nil || b.cluster == nil {
		t.Fatal("multi-instance mode is off on PostgreSQL")
	}
	return a, b
}

// syncNoFatal is ts.sync usable from goroutines.
func syncNoFatal(base, token, since string, timeoutMS int) (syncResult, error) {
	q := url.Values{}
	if since != "" {
		q.Set("since", since)
	}
	q.Set("timeout", fmt.Sprint(timeoutMS))
	q.Set("filter", `{"room":{"timeline":{"limit":1000}}}`)
	req, _ := http.NewRequest("GET", base+"/_matrix/client/v3/sync?"+q.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return syncResult{}, err
	}
	defer resp.Body.Close()
	var r syncResult
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("sync: status %d", resp.StatusCode)
	}
	return r, json.NewDecoder(resp.Body).Decode(&r)
}

func sendNoFatal(base, token, roomID, txn, body string) (string, error) {
	b, _ := json.Marshal(map[string]any{"msgtype": "m.text", "body": body})
	req, _ := http.NewRequest("PUT", base+"/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+txn, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("send: status %d: %v", resp.StatusCode, out)
	}
	id, _ := out["event_id"].(string)
	return id, nil
}

// roomTimeline reads a room's events from the database in stream order.
func roomTimeline(t *testing.T, db *storage.DB, roomID string) []*storage.Event {
	t.Helper()
	evs, err := db.EventsAfter(context.Background(), 0, 0, 100000)
	if err != nil {
		t.Fatal(err)
	}
	var out []*storage.Event
	for _, e := range evs {
		if e.RoomID == roomID {
			out = append(out, e)
		}
	}
	return out
}

// TestClusterChatObserversSeeOneOrder: users on A and B chat in one room
// while observers split over both instances long-poll /sync; every observer
// receives every message exactly once, all in the stream's one order, and
// the room's history is linear.
func TestClusterChatObserversSeeOneOrder(t *testing.T) {
	a, b := newTestCluster(t)
	_, aliceTok := a.createUser("alice")
	_, bobTok := a.createUser("bob")
	roomID := a.createRoom(aliceTok, map[string]any{"preset": "public_chat"})
	b.mustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), bobTok, map[string]any{})

	const observers, perSender = 10, 30
	type obs struct {
		srv  *testServer
		tok  string
		next string
	}
	var obsv []*obs
	for i := 0; i < observers; i++ {
		srv := a
		if i%2 == 1 {
			srv = b
		}
		_, tok := a.createUser(fmt.Sprintf("obs%d", i))
		srv.mustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), tok, map[string]any{})
		obsv = append(obsv, &obs{srv: srv, tok: tok, next: srv.sync(tok, "", 0, "").NextBatch})
	}

	got := make([][]string, observers)
	errs := make(chan error, observers+2)
	var wg sync.WaitGroup
	for i, o := range obsv {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(60 * time.Second)
			for len(got[i]) < 2*perSender {
				if time.Now().After(deadline) {
					errs <- fmt.Errorf("observer %d: only %d of %d messages", i, len(got[i]), 2*perSender)
					return
				}
				r, err := syncNoFatal(o.srv.URL, o.tok, o.next, 5000)
				if err != nil {
					errs <- err
					return
				}
				o.next = r.NextBatch
				if j, ok := r.Rooms.Join[roomID]; ok {
					if j.Timeline.Limited {
						errs <- fmt.Errorf("observer %d: limited timeline", i)
						return
					}
					got[i] = append(got[i], timelineBodies(j.Timeline.Events)...)
				}
			}
		}()
	}
	var senders sync.WaitGroup
	for s, sender := range []struct {
		srv *testServer
		tok string
	}{{a, aliceTok}, {b, bobTok}} {
		senders.Add(1)
		go func() {
			defer senders.Done()
			for k := 0; k < perSender; k++ {
				if _, err := sendNoFatal(sender.srv.URL, sender.tok, roomID, fmt.Sprintf("s%d-%d", s, k), fmt.Sprintf("m%d-%d", s, k)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	senders.Wait()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	var want []string
	for _, e := range roomTimeline(t, a.db, roomID) {
		if e.Type == "m.room.message" && e.Body != nil {
			want = append(want, *e.Body)
		}
	}
	if len(want) != 2*perSender {
		t.Fatalf("database holds %d messages, want %d", len(want), 2*perSender)
	}
	for i := range got {
		if fmt.Sprint(got[i]) != fmt.Sprint(want) {
			t.Fatalf("observer %d (on %s) saw\n%v\nwant the stream order\n%v", i, obsv[i].srv.URL, got[i], want)
		}
	}
	assertLinear(t, a.db, roomID)
}

// assertLinear checks that every event of the room follows the previous
// one: prev_events is exactly the event before it and depth grows by one.
func assertLinear(t *testing.T, db *storage.DB, roomID string) {
	t.Helper()
	evs := roomTimeline(t, db, roomID)
	for i, e := range evs {
		var pdu struct {
			PrevEvents []string `json:"prev_events"`
			Depth      int64    `json:"depth"`
		}
		if err := json.Unmarshal(e.PDUJSON, &pdu); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			continue
		}
		if len(pdu.PrevEvents) != 1 || pdu.PrevEvents[0] != evs[i-1].EventID || pdu.Depth != evs[i-1].Depth+1 {
			t.Fatalf("forked history at event %d (%s): prev_events %v depth %d, previous %s depth %d",
				i, e.EventID, pdu.PrevEvents, pdu.Depth, evs[i-1].EventID, evs[i-1].Depth)
		}
	}
}

// TestClusterConcurrentSendsStayLinear: several senders on both instances
// write into one room at once; the history stays one chain.
func TestClusterConcurrentSendsStayLinear(t *testing.T) {
	a, b := newTestCluster(t)
	_, ownerTok := a.createUser("owner")
	roomID := a.createRoom(ownerTok, map[string]any{"preset": "public_chat"})
	const senders, each = 6, 15
	var toks []string
	for i := 0; i < senders; i++ {
		_, tok := a.createUser(fmt.Sprintf("w%d", i))
		a.mustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), tok, map[string]any{})
		toks = append(toks, tok)
	}
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i, tok := range toks {
		srv := []*testServer{a, b}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < each; k++ {
				if _, err := sendNoFatal(srv.URL, tok, roomID, fmt.Sprintf("c%d", k), fmt.Sprintf("w%d-%d", i, k)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n := 0
	for _, e := range roomTimeline(t, a.db, roomID) {
		if e.Type == "m.room.message" {
			n++
		}
	}
	if n != senders*each {
		t.Fatalf("%d messages stored, want %d", n, senders*each)
	}
	assertLinear(t, a.db, roomID)
	// Both caches follow the room: a send on either still builds on the head.
	a.send(ownerTok, roomID, "after-a")
	b.send(ownerTok, roomID, "after-b")
	assertLinear(t, a.db, roomID)
}

// TestClusterSyncWakesAcrossInstances: a long-poll on B returns within
// milliseconds of a send on A (through the feed, not the fallback poll).
func TestClusterSyncWakesAcrossInstances(t *testing.T) {
	a, b := newTestCluster(t)
	_, aliceTok := a.createUser("alice")
	_, bobTok := a.createUser("bob")
	roomID := a.createRoom(aliceTok, map[string]any{"preset": "public_chat"})
	b.mustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), bobTok, map[string]any{})
	since := b.sync(bobTok, "", 0, "").NextBatch
	var worst time.Duration
	for i := 0; i < 5; i++ {
		type res struct {
			r   syncResult
			at  time.Time
			err error
		}
		done := make(chan res, 1)
		go func() {
			r, err := syncNoFatal(b.URL, bobTok, since, 10000)
			done <- res{r, time.Now(), err}
		}()
		time.Sleep(100 * time.Millisecond) // let the long-poll park
		body := fmt.Sprintf("wake-%d", i)
		a.send(aliceTok, roomID, body)
		sent := time.Now()
		var got res
		select {
		case got = <-done:
		case <-time.After(15 * time.Second):
			t.Fatal("long-poll on B never returned")
		}
		if got.err != nil {
			t.Fatal(got.err)
		}
		bodies := timelineBodies(got.r.Rooms.Join[roomID].Timeline.Events)
		if len(bodies) != 1 || bodies[0] != body {
			t.Fatalf("B's sync returned %v, want [%s]", bodies, body)
		}
		since = got.r.NextBatch
		worst = max(worst, got.at.Sub(sent))
	}
	t.Logf("worst wake-up on B after a send on A: %v", worst)
	if worst > 500*time.Millisecond {
		t.Fatalf("B woke %v after the send on A; want milliseconds", worst)
	}
}

// TestClusterTypingAndTokensAcrossInstances: typing on A shows on B, a
// txnId retried on the other instance answers with the same event, and a
// token logged out on A stops working on B.
func TestClusterTypingAndTokensAcrossInstances(t *testing.T) {
	a, b := newTestCluster(t)
	aliceID, aliceTok := a.createUser("alice")
	_, bobTok := a.createUser("bob")
	roomID := a.createRoom(aliceTok, map[string]any{"preset": "public_chat"})
	b.mustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), bobTok, map[string]any{})
	since := b.sync(bobTok, "", 0, "").NextBatch

	a.mustDo(200, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/typing/"+url.PathEscape(aliceID), aliceTok,
		map[string]any{"typing": true, "timeout": 30000})
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := b.sync(bobTok, since, 2000, "")
		since = r.NextBatch
		found := false
		for _, e := range r.Rooms.Join[roomID].Ephemeral.Events {
			if e["type"] == "m.typing" {
				ids, _ := e["content"].(map[string]any)["user_ids"].([]any)
				found = len(ids) == 1 && ids[0] == aliceID
			}
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("B never reported alice typing on A")
		}
	}

	// The same txnId on the other instance is the same request.
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/retry1"
	first := a.mustDo(200, "PUT", path, aliceTok, map[string]any{"msgtype": "m.text", "body": "once"})["event_id"]
	again := b.mustDo(200, "PUT", path, aliceTok, map[string]any{"msgtype": "m.text", "body": "once"})["event_id"]
	if first != again {
		t.Fatalf("retry on B created %v, want the original %v", again, first)
	}
	n := 0
	for _, e := range roomTimeline(t, a.db, roomID) {
		if e.Body != nil && *e.Body == "once" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d events for one txnId", n)
	}

	// Logout on A: B (whose session cache knows the token) refuses it.
	b.mustDo(200, "GET", "/_matrix/client/v3/account/whoami", aliceTok, nil)
	a.mustDo(200, "POST", "/_matrix/client/v3/logout", aliceTok, nil)
	out := time.Now()
	for {
		status, _ := b.do("GET", "/_matrix/client/v3/account/whoami", aliceTok, nil)
		if status == http.StatusUnauthorized {
			break
		}
		if time.Since(out) > 2*time.Second {
			t.Fatal("a token logged out on A still works on B")
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("token refused on B %v after the logout on A returned", time.Since(out))
}

// TestClusterResyncAfterLostNotifications: with B's feed silenced, the
// fallback poll still brings A's events to B's /sync.
func TestClusterResyncAfterLostNotifications(t *testing.T) {
	a, b := newTestCluster(t)
	_, aliceTok := a.createUser("alice")
	_, bobTok := a.createUser("bob")
	roomID := a.createRoom(aliceTok, map[string]any{"preset": "public_chat"})
	b.mustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), bobTok, map[string]any{})
	since := b.sync(bobTok, "", 0, "").NextBatch
	a.feed.Close() // A commits but publishes nothing from now on
	var sent []string
	for i := 0; i < 3; i++ {
		sent = append(sent, fmt.Sprintf("quiet-%d", i))
		a.send(aliceTok, roomID, sent[i])
	}
	var got []string
	start := time.Now()
	for len(got) < len(sent) && time.Since(start) < 10*time.Second {
		r := b.sync(bobTok, since, 3000, `{"room":{"timeline":{"limit":100}}}`)
		since = r.NextBatch
		got = append(got, timelineBodies(r.Rooms.Join[roomID].Timeline.Events)...)
	}
	sort.Strings(got)
	if fmt.Sprint(got) != fmt.Sprint(sent) {
		t.Fatalf("B saw %v, want %v", got, sent)
	}
	t.Logf("B caught up %v after the sends without notifications", time.Since(start))
}

// TestClusterStateChangesCarryAcross: state one instance changes decides
// what the other allows next, whether the other learns of it through the
// feed or finds the room moved while committing; redactions and renames
// carry across too, and the history stays linear.
func TestClusterStateChangesCarryAcross(t *testing.T) {
	a, b := newTestCluster(t)
	_, ownerTok := a.createUser("owner")
	_, malloryTok := a.createUser("mallory")
	roomID := a.createRoom(ownerTok, map[string]any{"preset": "public_chat"})
	roomPath := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
	a.mustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), malloryTok, map[string]any{})
	first := a.send(malloryTok, roomID, "hello from A") // A now caches the room

	setEventsDefault := func(level int) {
		pl := b.mustDo(200, "GET", roomPath+"/state/m.room.power_levels/", ownerTok, nil)
		pl["events_default"] = level
		b.mustDo(200, "PUT", roomPath+"/state/m.room.power_levels/", ownerTok, pl)
	}
	setEventsDefault(50)
	// Right away (the feed may not have reached A yet): the commit finds
	// the room moved and rebuilds on the new power levels.
	a.wantErr(403, "M_FORBIDDEN", "PUT", roomPath+"/send/m.room.message/m1", malloryTok, map[string]any{"msgtype": "m.text", "body": "refused"})

	b.mustDo(200, "PUT", roomPath+"/redact/"+url.PathEscape(first)+"/r1", ownerTok, map[string]any{"reason": "test"})
	setEventsDefault(0)
	// A refusal is checked against the stored head too: allowed at once.
	a.send(malloryTok, roomID, "allowed again")
	b.mustDo(200, "PUT", roomPath+"/state/m.room.name/", ownerTok, map[string]any{"name": "renamed on B"})
	// Once the feed has been applied, A answers from its refreshed cache.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, name := a.do("GET", roomPath+"/state/m.room.name/", ownerTok, nil)
		if name["name"] == "renamed on B" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A still answers room name %v", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ev := a.mustDo(200, "GET", roomPath+"/event/"+url.PathEscape(first), malloryTok, nil)
	if content, _ := ev["content"].(map[string]any); len(content) != 0 {
		t.Fatalf("the event B redacted still has content on A: %v", ev)
	}
	for i := 0; i < 10; i++ {
		[]*testServer{a, b}[i%2].send([]string{ownerTok, malloryTok}[i%2], roomID, fmt.Sprintf("alternating %d", i))
	}
	assertLinear(t, a.db, roomID)
}
