package clientapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"
)

// A retried send answers with the original event even when sending it now
// would be refused (here: the sender has left the room since).
func TestSendTxnRetryAfterLeave(t *testing.T) {
	ts := rmNewServer(t)
	_, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	roomID := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat"})
	rmJoin(t, ts, bobTok, roomID)
	path := rmRoomPath(roomID, "/send/m.room.message/retry-1")
	body := map[string]any{"msgtype": "m.text", "body": "before leaving"}
	first := ts.mustDo(http.StatusOK, "PUT", path, bobTok, body)["event_id"]
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/leave"), bobTok, map[string]any{})
	again := ts.mustDo(http.StatusOK, "PUT", path, bobTok, body)["event_id"]
	if first == nil || again != first {
		t.Fatalf("retry after leaving: %v, first send %v", again, first)
	}
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", rmRoomPath(roomID, "/send/m.room.message/retry-2"), bobTok, body)
}

// Concurrent sends are committed in batches; a retried txnId inside a batch
// (a retry of an already committed send, or the same request twice at
// once) yields the original event and no second one.
func TestConcurrentSendsWithRetriedTxn(t *testing.T) {
	ts := rmNewServer(t)
	_, aliceTok := ts.createUser("alice")
	roomID := rmCreate(t, ts, aliceTok, nil)
	body := map[string]any{"msgtype": "m.text", "body": "x"}
	original := ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/send/m.room.message/dup"), aliceTok, body)["event_id"].(string)

	type result struct {
		txn, eventID string
		err          error
	}
	const rounds = 5
	var wg sync.WaitGroup
	results := make(chan result, rounds*6)
	client := &http.Client{Timeout: 30 * time.Second}
	put := func(txn string) {
		defer wg.Done()
		raw, _ := json.Marshal(body)
		req, _ := http.NewRequest("PUT", ts.URL+rmRoomPath(roomID, "/send/m.room.message/"+url.PathEscape(txn)), bytes.NewReader(raw))
		req.Header.Set("Authorization", "Bearer "+aliceTok)
		resp, err := client.Do(req)
		if err != nil {
			results <- result{txn: txn, err: err}
			return
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		var out struct {
			EventID string `json:"event_id"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(data, &out) != nil {
			results <- result{txn: txn, err: fmt.Errorf("status %d: %s", resp.StatusCode, data)}
			return
		}
		results <- result{txn: txn, eventID: out.EventID}
	}
	for r := 0; r < rounds; r++ {
		for _, txn := range []string{"dup", fmt.Sprintf("new-%d-a", r), fmt.Sprintf("new-%d-b", r), "twice", "twice", fmt.Sprintf("new-%d-c", r)} {
			wg.Add(1)
			go put(txn)
		}
	}
	wg.Wait()
	close(results)
	byTxn := map[string]map[string]bool{}
	for res := range results {
		if res.err != nil {
			t.Fatalf("send %s: %v", res.txn, res.err)
		}
		if byTxn[res.txn] == nil {
			byTxn[res.txn] = map[string]bool{}
		}
		byTxn[res.txn][res.eventID] = true
	}
	if len(byTxn["dup"]) != 1 || !byTxn["dup"][original] {
		t.Fatalf("retries of a committed txnId returned %v, want only %s", byTxn["dup"], original)
	}
	if len(byTxn["twice"]) != 1 {
		t.Fatalf("the same txnId sent concurrently returned several events: %v", byTxn["twice"])
	}
	// The original, one for "twice" and three new ones per round.
	if n := rmCountEvents(t, ts, roomID, "m.room.message"); n != 2+3*rounds {
		t.Fatalf("%d messages in the room, want %d", n, 2+3*rounds)
	}
}

// Events in an incremental /sync (rendered from the in-memory ring, with the
// viewer-independent part shared between viewers) carry what GET /event
// shows, transaction_id only for the sending device, a fresh age and the
// server-side unsigned fields of state events.
func TestSyncRenderingOfRecentEvents(t *testing.T) {
	ts := rmNewServer(t)
	alice, aliceTok := ts.createUser("alice")
	otherTok := rmSecondDevice(t, ts, alice, "OTHERDEVICE")
	_, bobTok := ts.createUser("bob")
	roomID := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat", "topic": "first topic"})
	rmJoin(t, ts, bobTok, roomID)
	tokens := map[string]string{"alice": aliceTok, "alice-other": otherTok, "bob": bobTok}
	since := map[string]string{}
	for name, tok := range tokens {
		since[name] = ts.sync(tok, "", 0, "").NextBatch
	}
	msgID := ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/send/m.room.message/render-1"), aliceTok,
		map[string]any{"msgtype": "m.text", "body": "<b>hi</b> \u2028 é"})["event_id"].(string)
	topicID := ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/state/m.room.topic/"), aliceTok,
		map[string]any{"topic": "second topic"})["event_id"].(string)

	for _, name := range []string{"alice", "alice-other", "bob", "bob"} { // bob twice: a cache hit
		r := ts.sync(tokens[name], since[name], 0, "")
		evs := r.Rooms.Join[roomID].Timeline.Events
		if len(evs) != 2 {
			t.Fatalf("%s: timeline %v, want the message and the topic", name, evs)
		}
		for _, ev := range evs {
			id, _ := ev["event_id"].(string)
			want := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/event/"+url.PathEscape(id)), tokens[name], nil)
			for _, key := range []string{"content", "event_id", "origin_server_ts", "sender", "state_key", "type"} {
				g, _ := json.Marshal(ev[key])
				w, _ := json.Marshal(want[key])
				if string(g) != string(w) {
					t.Fatalf("%s: %s of %s is %s in /sync, %s in /event", name, key, id, g, w)
				}
			}
			if _, ok := ev["room_id"]; ok {
				t.Fatalf("%s: sync event carries room_id: %v", name, ev)
			}
			unsigned, _ := ev["unsigned"].(map[string]any)
			if age, ok := unsigned["age"].(float64); !ok || age < 0 {
				t.Fatalf("%s: unsigned.age %v", name, unsigned["age"])
			}
			txn, hasTxn := unsigned["transaction_id"]
			if id == msgID && name == "alice" {
				if txn != "render-1" {
					t.Fatalf("sending device: transaction_id %v", txn)
				}
			} else if hasTxn {
				t.Fatalf("%s sees transaction_id %v on %s", name, txn, id)
			}
			if id == topicID {
				prev, _ := unsigned["prev_content"].(map[string]any)
				if prev["topic"] != "first topic" || unsigned["replaces_state"] == nil {
					t.Fatalf("%s: topic change unsigned %v", name, unsigned)
				}
			}
		}
	}
}
