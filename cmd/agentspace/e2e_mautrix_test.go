package main

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

const e2ePassword = "correct horse battery staple"

// mautrixUser registers (m.login.dummy UIA) and logs in a user with mautrix-go.
func mautrixUser(t *testing.T, ctx context.Context, url, localpart string) *mautrix.Client {
	t.Helper()
	anon, err := mautrix.NewClient(url, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anon.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: localpart, Password: e2ePassword}); err != nil {
		t.Fatalf("register %s: %v", localpart, err)
	}
	return mautrixLogin(t, ctx, url, localpart)
}

func mautrixLogin(t *testing.T, ctx context.Context, url, localpart string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(url, "", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = cli.Login(ctx, &mautrix.ReqLogin{
		Type:             mautrix.AuthTypePassword,
		Identifier:       mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:         e2ePassword,
		StoreCredentials: true,
	})
	if err != nil {
		t.Fatalf("login %s: %v", localpart, err)
	}
	return cli
}

// eventWaiter collects events a syncing client receives.
type eventWaiter struct {
	mu     sync.Mutex
	events []*event.Event
	signal chan struct{}
}

func newEventWaiter(cli *mautrix.Client, types ...event.Type) *eventWaiter {
	w := &eventWaiter{signal: make(chan struct{}, 1)}
	syncer := cli.Syncer.(*mautrix.DefaultSyncer)
	for _, typ := range types {
		syncer.OnEventType(typ, func(_ context.Context, evt *event.Event) {
			w.mu.Lock()
			w.events = append(w.events, evt)
			w.mu.Unlock()
			select {
			case w.signal <- struct{}{}:
			default:
			}
		})
	}
	return w
}

// wait blocks until pred matches a received event.
func (w *eventWaiter) wait(t *testing.T, what string, pred func(*event.Event) bool) *event.Event {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		w.mu.Lock()
		for _, e := range w.events {
			if pred(e) {
				w.mu.Unlock()
				return e
			}
		}
		w.mu.Unlock()
		select {
		case <-w.signal:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func startSync(t *testing.T, ctx context.Context, cli *mautrix.Client) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = cli.SyncWithContext(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// pageBack collects every m.room.message body in a room via /messages.
func pageBack(t *testing.T, ctx context.Context, cli *mautrix.Client, roomID id.RoomID) []string {
	t.Helper()
	var bodies []string
	from := ""
	for i := 0; i < 1000; i++ {
		resp, err := cli.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, nil, 64)
		if err != nil {
			t.Fatalf("messages: %v", err)
		}
		for _, e := range resp.Chunk {
			if e.Type == event.EventMessage {
				_ = e.Content.ParseRaw(e.Type)
				bodies = append(bodies, e.Content.AsMessage().Body)
			}
		}
		if resp.End == "" || len(resp.Chunk) == 0 {
			break
		}
		from = resp.End
	}
	for i, j := 0, len(bodies)-1; i < j; i, j = i+1, j-1 {
		bodies[i], bodies[j] = bodies[j], bodies[i]
	}
	return bodies
}

// TestMautrixGo drives the server with mautrix-go: register, log in, create a
// room, a second user joins, messages both ways through long-poll sync,
// typing and receipts, 500 messages paginated in order, restart keeps all.
func TestMautrixGo(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dataDir := t.TempDir()
	port := freePort(t)
	srv := startServerProc(t, dataDir, port)

	carol := mautrixUser(t, ctx, srv.URL, "carol")
	dave := mautrixUser(t, ctx, srv.URL, "dave")
	carolEvents := newEventWaiter(carol, event.EventMessage, event.StateMember, event.EphemeralEventReceipt)
	daveEvents := newEventWaiter(dave, event.EventMessage, event.EphemeralEventTyping)
	syncCtx, stopSync := context.WithCancel(ctx)
	startSync(t, syncCtx, carol)
	startSync(t, syncCtx, dave)

	created, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "mautrix room", Preset: "public_chat", RoomAliasName: "mautrix"})
	if err != nil {
		t.Fatalf("createRoom: %v", err)
	}
	roomID := created.RoomID
	if _, err := dave.JoinRoom(ctx, "#mautrix:localhost", nil); err != nil {
		t.Fatalf("join by alias: %v", err)
	}
	carolEvents.wait(t, "carol sees dave join", func(e *event.Event) bool {
		return e.Type == event.StateMember && e.GetStateKey() == dave.UserID.String() && e.Content.AsMember().Membership == event.MembershipJoin
	})

	sent, err := carol.SendText(ctx, roomID, "hi dave")
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	got := daveEvents.wait(t, "dave receives carol's message", func(e *event.Event) bool { return e.ID == sent.EventID })
	if got.Content.AsMessage().Body != "hi dave" {
		t.Fatalf("body %q", got.Content.AsMessage().Body)
	}
	reply, err := dave.SendText(ctx, roomID, "hi carol")
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	carolEvents.wait(t, "carol receives dave's reply", func(e *event.Event) bool { return e.ID == reply.EventID })

	if _, err := carol.UserTyping(ctx, roomID, true, 10*time.Second); err != nil {
		t.Fatalf("typing: %v", err)
	}
	daveEvents.wait(t, "dave sees carol typing", func(e *event.Event) bool {
		return e.Type == event.EphemeralEventTyping && len(e.Content.AsTyping().UserIDs) == 1 && e.Content.AsTyping().UserIDs[0] == carol.UserID
	})
	if err := dave.MarkRead(ctx, roomID, sent.EventID); err != nil {
		t.Fatalf("receipt: %v", err)
	}
	carolEvents.wait(t, "carol sees dave's receipt", func(e *event.Event) bool {
		if e.Type != event.EphemeralEventReceipt {
			return false
		}
		_, ok := (*e.Content.AsReceipt())[sent.EventID][event.ReceiptTypeRead][dave.UserID]
		return ok
	})

	const n = 500
	for i := 0; i < n; i++ {
		if _, err := carol.SendText(ctx, roomID, fmt.Sprintf("msg %04d", i)); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	checkAll := func(cli *mautrix.Client) {
		t.Helper()
		var msgs []string
		for _, b := range pageBack(t, ctx, cli, roomID) {
			if len(b) == 8 && b[:4] == "msg " {
				msgs = append(msgs, b)
			}
		}
		if len(msgs) != n {
			t.Fatalf("paginated %d of %d messages", len(msgs), n)
		}
		for i, b := range msgs {
			if b != fmt.Sprintf("msg %04d", i) {
				t.Fatalf("message %d is %q: out of order", i, b)
			}
		}
	}
	checkAll(dave)
	stopSync()
	srv.stop()

	srv = startServerProc(t, dataDir, port)
	dave = mautrixLogin(t, ctx, srv.URL, "dave")
	joined, err := dave.JoinedRooms(ctx)
	if err != nil || len(joined.JoinedRooms) != 1 || joined.JoinedRooms[0] != roomID {
		t.Fatalf("joined rooms after restart: %v %v", joined, err)
	}
	checkAll(dave)
	evt, err := dave.GetEvent(ctx, roomID, sent.EventID)
	if err != nil {
		t.Fatalf("get event after restart: %v", err)
	}
	_ = evt.Content.ParseRaw(evt.Type)
	if evt.Content.AsMessage().Body != "hi dave" {
		t.Fatalf("event after restart: %+v", evt)
	}
	srv.stop()
}
