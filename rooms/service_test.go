package rooms

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/agentspace/agentspace/storage"
)

type testPDU struct {
	EventID    string                       `json:"event_id"`
	PrevEvents []string                     `json:"prev_events"`
	Depth      int64                        `json:"depth"`
	Hashes     map[string]string            `json:"hashes"`
	Signatures map[string]map[string]string `json:"signatures"`
}

// checkChain asserts that a room's events form one linear, signed history
// in stream order: each event's only prev_event is the one before it.
func checkChain(t *testing.T, db *storage.DB, roomID string) []*storage.Event {
	t.Helper()
	evs, err := db.RoomEvents(context.Background(), roomID, 0, 1<<62, false, 10000, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range evs {
		var p testPDU
		if err := json.Unmarshal(e.PDUJSON, &p); err != nil {
			t.Fatalf("event %s: %v", e.EventID, err)
		}
		if p.Hashes["sha256"] == "" || len(p.Signatures["test"]) == 0 {
			t.Fatalf("event %s is not hashed and signed: %s", e.EventID, e.PDUJSON)
		}
		if i == 0 {
			continue
		}
		if e.Pos <= evs[i-1].Pos || e.Depth != evs[i-1].Depth+1 {
			t.Fatalf("event %d: pos %d depth %d after pos %d depth %d", i, e.Pos, e.Depth, evs[i-1].Pos, evs[i-1].Depth)
		}
		if len(p.PrevEvents) != 1 || p.PrevEvents[0] != evs[i-1].EventID {
			t.Fatalf("event %d (%s): prev_events %v, want [%s]", i, e.EventID, p.PrevEvents, evs[i-1].EventID)
		}
	}
	return evs
}

// Concurrent sends to one room form one linear history, which a restarted
// engine continues.
func TestConcurrentSendsAndRestart(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	roomID, err := env.svc.CreateRoom(ctx, CreateRoomRequest{Creator: "@alice:test", Preset: PresetPublicChat})
	if err != nil {
		t.Fatalf("CreateRoom: %v", err)
	}
	const senders, each = 4, 15
	var wg sync.WaitGroup
	errs := make(chan error, senders*each)
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				_, err := env.svc.Send(ctx, roomID, EventRequest{Sender: "@alice:test", Type: "m.room.message",
					Content: json.RawMessage(fmt.Sprintf(`{"msgtype":"m.text","body":"s%d m%d"}`, s, i))})
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Send: %v", err)
	}
	before := checkChain(t, env.db, roomID)
	msgs := 0
	for _, e := range before {
		if e.Type == "m.room.message" {
			msgs++
		}
	}
	if msgs != senders*each {
		t.Fatalf("%d messages stored, want %d", msgs, senders*each)
	}

	env.reopen()
	if got := env.svc.Notifier().Latest(); got != before[len(before)-1].Pos {
		t.Fatalf("notifier after restart at %d, want %d", got, before[len(before)-1].Pos)
	}
	if m, err := env.svc.Membership(ctx, roomID, "@alice:test"); err != nil || m != "join" {
		t.Fatalf("membership after restart: %q, %v", m, err)
	}
	ev, err := env.svc.Send(ctx, roomID, EventRequest{Sender: "@alice:test", Type: "m.room.message",
		Content: json.RawMessage(`{"msgtype":"m.text","body":"after restart"}`)})
	if err != nil {
		t.Fatalf("Send after restart: %v", err)
	}
	after := checkChain(t, env.db, roomID)
	if len(after) != len(before)+1 || after[len(after)-1].EventID != ev.EventID {
		t.Fatalf("after restart: %d events (want %d), last %s (want %s)", len(after), len(before)+1, after[len(after)-1].EventID, ev.EventID)
	}
}

// A txnId reused by the same device returns the first event; another
// device's same txnId is a new event.
func TestSendTxnIDIdempotent(t *testing.T) {
	env := newTestService(t)
	ctx := context.Background()
	roomID, err := env.svc.CreateRoom(ctx, CreateRoomRequest{Creator: "@alice:test"})
	if err != nil {
		t.Fatalf("CreateRoom: %v", err)
	}
	req := EventRequest{Sender: "@alice:test", Type: "m.room.message", TxnID: "t1", DeviceID: "D1",
		Content: json.RawMessage(`{"msgtype":"m.text","body":"once"}`)}
	first, err := env.svc.Send(ctx, roomID, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := env.svc.Send(ctx, roomID, req)
	if err != nil || again.EventID != first.EventID {
		t.Fatalf("retry: %v, %v; want event %s", again, err, first.EventID)
	}
	req.DeviceID = "D2"
	other, err := env.svc.Send(ctx, roomID, req)
	if err != nil || other.EventID == first.EventID {
		t.Fatalf("other device: %v, %v; want a new event", other, err)
	}
	checkChain(t, env.db, roomID)
}
