package clientapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/agentspace/agentspace/rooms"
)

// TestConcurrentSendersAndObservers: 20 users long-poll /sync while 10 users
// send 200 messages each into one room. Every observer must see every
// message exactly once, and all observers the same order.
func TestConcurrentSendersAndObservers(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	const senders, perSender, observers = 10, 200, 20
	ts := newTestServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	owner, ownerToken := ts.createUser("owner")
	created := ts.mustDo(200, "POST", "/_matrix/client/v3/createRoom", ownerToken, map[string]any{"preset": "public_chat"})
	roomID := created["room_id"].(string)
	_ = owner
	join := func(localpart string) string {
		_, token := ts.createUser(localpart)
		ts.mustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), token, map[string]any{})
		return token
	}
	senderTokens := make([]string, senders)
	for i := range senderTokens {
		senderTokens[i] = join(fmt.Sprintf("sender%d", i))
	}
	observerTokens := make([]string, observers)
	for i := range observerTokens {
		observerTokens[i] = join(fmt.Sprintf("observer%d", i))
	}

	// Observers start from their current position so they only see new messages.
	results := make([][]string, observers)
	errs := make([]error, observers)
	var wg sync.WaitGroup
	ready := make(chan struct{}, observers)
	for i, tok := range observerTokens {
		wg.Add(1)
		go func(i int, tok string) {
			defer wg.Done()
			_, initial := ts.doRaw("GET", "/_matrix/client/v3/sync?timeout=0", tok, nil)
			var r struct {
				NextBatch string `json:"next_batch"`
			}
			_ = json.Unmarshal(initial, &r)
			ready <- struct{}{}
			results[i], errs[i] = observeFrom(ctx, ts, tok, roomID, r.NextBatch, senders*perSender)
		}(i, tok)
	}
	for range observers {
		<-ready
	}

	sentIDs := make(map[string]bool)
	var sentMu sync.Mutex
	var swg sync.WaitGroup
	for i, tok := range senderTokens {
		swg.Add(1)
		go func(i int, tok string) {
			defer swg.Done()
			for j := 0; j < perSender; j++ {
				status, out := ts.do("PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/t%d-%d", url.PathEscape(roomID), i, j), tok,
					map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("sender %d message %d", i, j)})
				if status != 200 {
					t.Errorf("send: %d %v", status, out)
					return
				}
				sentMu.Lock()
				sentIDs[out["event_id"].(string)] = true
				sentMu.Unlock()
			}
		}(i, tok)
	}
	swg.Wait()
	wg.Wait()

	if len(sentIDs) != senders*perSender {
		t.Fatalf("sent %d distinct events, want %d", len(sentIDs), senders*perSender)
	}
	for i := range results {
		if errs[i] != nil {
			t.Fatalf("observer %d: %v", i, errs[i])
		}
		seen := map[string]bool{}
		for _, id := range results[i] {
			if seen[id] {
				t.Fatalf("observer %d saw %s twice", i, id)
			}
			if !sentIDs[id] {
				t.Fatalf("observer %d saw unknown event %s", i, id)
			}
			seen[id] = true
		}
		if len(seen) != len(sentIDs) {
			t.Fatalf("observer %d saw %d of %d messages", i, len(seen), len(sentIDs))
		}
		for k := range results[i] {
			if results[i][k] != results[0][k] {
				t.Fatalf("observer %d disagrees with observer 0 at position %d", i, k)
			}
		}
	}
}

// observeFrom is observeRoom starting from a given since token.
func observeFrom(ctx context.Context, ts *testServer, token, roomID, since string, want int) ([]string, error) {
	seen := make([]string, 0, want)
	filter := url.QueryEscape(`{"room":{"timeline":{"limit":100}}}`)
	for len(seen) < want {
		if ctx.Err() != nil {
			return seen, fmt.Errorf("timed out with %d of %d", len(seen), want)
		}
		path := "/_matrix/client/v3/sync?timeout=10000&filter=" + filter + "&since=" + url.QueryEscape(since)
		status, raw := ts.doRaw("GET", path, token, nil)
		if status != http.StatusOK {
			return seen, fmt.Errorf("sync: %d %s", status, raw)
		}
		var resp struct {
			NextBatch string `json:"next_batch"`
			Rooms     struct {
				Join map[string]struct {
					Timeline struct {
						Events    []rooms.ClientEvent `json:"events"`
						Limited   bool                `json:"limited"`
						PrevBatch string              `json:"prev_batch"`
					} `json:"timeline"`
				} `json:"join"`
			} `json:"rooms"`
		}
		if err := json.Unmarshal(raw, &resp); err != nil {
			return seen, err
		}
		if room, ok := resp.Rooms.Join[roomID]; ok {
			events := room.Timeline.Events
			if room.Timeline.Limited {
				// Fill the gap between since and the timeline from /messages.
				gap, err := fillGap(ts, token, roomID, room.Timeline.PrevBatch, since)
				if err != nil {
					return seen, err
				}
				events = append(gap, events...)
			}
			for _, e := range events {
				if e.Type == "m.room.message" {
					seen = append(seen, e.EventID)
				}
			}
		}
		since = resp.NextBatch
	}
	return seen, nil
}

// fillGap pages backwards from prevBatch down to the old since token and
// returns the events oldest first.
func fillGap(ts *testServer, token, roomID, prevBatch, since string) ([]rooms.ClientEvent, error) {
	var out []rooms.ClientEvent
	from := prevBatch
	for {
		path := fmt.Sprintf("/_matrix/client/v3/rooms/%s/messages?dir=b&limit=100&from=%s&to=%s", url.PathEscape(roomID), url.QueryEscape(from), url.QueryEscape(since))
		status, raw := ts.doRaw("GET", path, token, nil)
		if status != http.StatusOK {
			return nil, fmt.Errorf("messages: %d %s", status, raw)
		}
		var resp struct {
			Chunk []rooms.ClientEvent `json:"chunk"`
			End   string              `json:"end"`
		}
		if err := json.Unmarshal(raw, &resp); err != nil {
			return nil, err
		}
		out = append(out, resp.Chunk...)
		if resp.End == "" || len(resp.Chunk) == 0 {
			break
		}
		from = resp.End
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}
