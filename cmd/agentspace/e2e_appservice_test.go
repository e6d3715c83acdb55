package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// asCollector records the room events a mautrix-go appservice receives.
type asCollector struct {
	mu     sync.Mutex
	events []*event.Event
	signal chan struct{}
}

func (c *asCollector) run(ctx context.Context, as *appservice.AppService) {
	for {
		select {
		case <-ctx.Done():
			return
		case evt := <-as.Events:
			c.mu.Lock()
			c.events = append(c.events, evt)
			c.mu.Unlock()
			select {
			case c.signal <- struct{}{}:
			default:
			}
		}
	}
}

// bodies lists the text bodies received in roomID, in arrival order.
func (c *asCollector) bodies(roomID id.RoomID) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, e := range c.events {
		if e.RoomID == roomID && e.Type == event.EventMessage {
			if mc, ok := e.Content.Parsed.(*event.MessageEventContent); ok {
				out = append(out, mc.Body)
			} else if b, ok := e.Content.Raw["body"].(string); ok {
				out = append(out, b)
			}
		}
	}
	return out
}

func (c *asCollector) waitBodies(t *testing.T, roomID id.RoomID, n int) []string {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if got := c.bodies(roomID); len(got) >= n {
			return got
		}
		select {
		case <-c.signal:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("appservice received %d of %d messages: %v", len(c.bodies(roomID)), n, c.bodies(roomID))
		}
	}
}

// TestMautrixAppservice runs mautrix-go's appservice package as a real
// appservice against the real binary: it registers bot users, joins them to
// a room, sends as them and receives every transaction, across a restart of
// AgentSpace in the middle of the conversation.
func TestMautrixAppservice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	asPort := freePort(t)
	regPath := filepath.Join(dir, "agents.yaml")

	// The registration comes from our own CLI, as a user would make it.
	out, err := exec.Command(agentspaceBinary(t), "appservice", "new", "--id", "agents",
		"--url", "http://127.0.0.1:"+strconv.Itoa(asPort), "--users", `@agent_.*:localhost`,
		"--sender", "agentsbot", "--out", regPath).CombinedOutput()
	if err != nil {
		t.Fatalf("appservice new: %v\n%s", err, out)
	}
	reg, err := appservice.LoadRegistration(regPath)
	if err != nil {
		t.Fatal(err)
	}

	hsPort := freePort(t)
	env := []string{"APPSERVICE_REGISTRATIONS=" + regPath}
	proc := startServerProc(t, dir, hsPort, env...)

	as := appservice.Create()
	as.Registration = reg
	as.HomeserverDomain = "localhost"
	if err := as.SetHomeserverURL(proc.URL); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(asPort))
	if err != nil {
		t.Fatal(err)
	}
	asServer := &http.Server{Handler: as.Router, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := asServer.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("appservice server: %v", err)
		}
	}()
	defer asServer.Close()
	collector := &asCollector{signal: make(chan struct{}, 1)}
	go collector.run(ctx, as)

	// The homeserver can reach the appservice.
	if resp, err := as.BotClient().AppservicePing(ctx, reg.ID, "e2e-ping"); err != nil || resp.DurationMS < 0 {
		t.Fatalf("appservice ping: %v", err)
	}

	human := mautrixUser(t, ctx, proc.URL, "human")
	room, err := human.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "agents"})
	if err != nil {
		t.Fatal(err)
	}
	alpha := as.Intent("@agent_alpha:localhost")
	beta := as.Intent("@agent_beta:localhost")
	for _, bot := range []*appservice.IntentAPI{alpha, beta} {
		if err := bot.EnsureRegistered(ctx); err != nil {
			t.Fatalf("register %s: %v", bot.UserID, err)
		}
		if err := bot.EnsureJoined(ctx, room.RoomID); err != nil {
			t.Fatalf("join %s: %v", bot.UserID, err)
		}
	}
	// Bots appear as bots to the admin-facing data; they send as themselves.
	if _, err := alpha.SendText(ctx, room.RoomID, "alpha: hello"); err != nil {
		t.Fatal(err)
	}
	want := []string{"alpha: hello"}
	for i := range 10 {
		body := fmt.Sprintf("human %d", i)
		if _, err := human.SendText(ctx, room.RoomID, body); err != nil {
			t.Fatal(err)
		}
		want = append(want, body)
	}
	if _, err := beta.SendText(ctx, room.RoomID, "beta: before restart"); err != nil {
		t.Fatal(err)
	}
	want = append(want, "beta: before restart")

	// Restart AgentSpace in the middle, without waiting for delivery.
	proc.stop()
	proc = startServerProc(t, dir, hsPort, env...)
	for i := 10; i < 20; i++ {
		body := fmt.Sprintf("human %d", i)
		if _, err := human.SendText(ctx, room.RoomID, body); err != nil {
			t.Fatal(err)
		}
		want = append(want, body)
	}
	if _, err := alpha.SendText(ctx, room.RoomID, "alpha: after restart"); err != nil {
		t.Fatal(err)
	}
	want = append(want, "alpha: after restart")

	got := collector.waitBodies(t, room.RoomID, len(want))
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("appservice received\n %v\nwant\n %v", got, want)
	}
	// Bot joins reached the appservice too (state_key in its namespace).
	collector.mu.Lock()
	joins := map[string]bool{}
	for _, e := range collector.events {
		if e.Type == event.StateMember && e.RoomID == room.RoomID {
			joins[e.GetStateKey()] = true
		}
	}
	collector.mu.Unlock()
	if !joins["@agent_alpha:localhost"] || !joins["@agent_beta:localhost"] {
		t.Fatalf("bot joins not delivered: %v", joins)
	}
	proc.stop()
}
