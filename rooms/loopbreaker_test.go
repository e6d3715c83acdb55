package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"
)

// fakeClock is a settable clock for the per-minute budget.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// loopEnv is a public room with a human (@alice, who also posts the
// notices) and two bots.
type loopEnv struct {
	*testEnv
	lb     *LoopBreaker
	clock  *fakeClock
	roomID string
}

func newLoopEnv(t *testing.T, settings LoopBreakerSettings) *loopEnv {
	env := newTestService(t)
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	lb := NewLoopBreaker(env.svc, LoopBreakerOptions{Defaults: settings, NoticeSender: func() string { return "@alice:test" }, Now: clock.Now})
	ctx := context.Background()
	roomID, err := env.svc.CreateRoom(ctx, CreateRoomRequest{Creator: "@alice:test", Preset: PresetPublicChat})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"@bot1:test", "@bot2:test"} {
		if _, err := env.svc.ChangeMembership(ctx, roomID, MembershipRequest{Sender: u, Target: u, Membership: spec.Join}); err != nil {
			t.Fatal(err)
		}
	}
	return &loopEnv{testEnv: env, lb: lb, clock: clock, roomID: roomID}
}

// send goes through the loop breaker the way the client API does.
func (e *loopEnv) send(sender string, bot bool) error {
	ctx := context.Background()
	done, err := e.lb.Admit(ctx, e.roomID, "m.room.message", bot)
	if err != nil {
		return err
	}
	_, err = e.svc.Send(ctx, e.roomID, EventRequest{Sender: sender, Type: "m.room.message",
		Content: json.RawMessage(`{"msgtype":"m.text","body":"hi"}`)})
	if done != nil {
		done(err == nil)
	}
	return err
}

func (e *loopEnv) notices(t *testing.T) []string {
	t.Helper()
	evs, err := e.db.RoomEvents(context.Background(), e.roomID, 0, 1<<62, false, 1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ev := range evs {
		var c struct {
			MsgType string          `json:"msgtype"`
			Body    string          `json:"body"`
			LB      json.RawMessage `json:"org.agentspace.loop_breaker"`
		}
		var pdu struct {
			Content json.RawMessage `json:"content"`
		}
		_ = json.Unmarshal(ev.PDUJSON, &pdu)
		_ = json.Unmarshal(pdu.Content, &c)
		if c.MsgType == "m.notice" && len(c.LB) > 0 {
			if ev.Sender != "@alice:test" {
				t.Fatalf("notice sent by %s", ev.Sender)
			}
			out = append(out, c.Body)
		}
	}
	return out
}

func wantLimit(t *testing.T, err error) int64 {
	t.Helper()
	var re mautrix.RespError
	if !errors.As(err, &re) || re.ErrCode != "M_LIMIT_EXCEEDED" || re.StatusCode != 429 {
		t.Fatalf("got %v, want 429 M_LIMIT_EXCEEDED", err)
	}
	ms, ok := re.ExtraData["retry_after_ms"].(int64)
	if !ok || ms <= 0 {
		t.Fatalf("retry_after_ms missing: %#v", re.ExtraData)
	}
	return ms
}

// Two bots echoing each other stop after the budget, the room gets one
// notice however often they retry, and a human message resumes them.
func TestLoopBreakerConsecutive(t *testing.T) {
	e := newLoopEnv(t, LoopBreakerSettings{Enabled: true, MaxConsecutive: 4})
	bots := []string{"@bot1:test", "@bot2:test"}
	for i := range 4 {
		if err := e.send(bots[i%2], true); err != nil {
			t.Fatalf("bot message %d: %v", i, err)
		}
	}
	for i := range 3 {
		wantLimit(t, e.send(bots[i%2], true))
	}
	if n := e.notices(t); len(n) != 1 {
		t.Fatalf("got %d notices, want 1: %q", len(n), n)
	}
	st, _ := e.lb.Status(context.Background(), e.roomID)
	if st.Paused != pausedConsecutive || st.Consecutive != 4 {
		t.Fatalf("status %+v", st)
	}
	if err := e.send("@alice:test", false); err != nil {
		t.Fatalf("human message: %v", err)
	}
	for i := range 4 {
		if err := e.send(bots[i%2], true); err != nil {
			t.Fatalf("bot message %d after the human spoke: %v", i, err)
		}
	}
	wantLimit(t, e.send(bots[0], true))
	if n := e.notices(t); len(n) != 2 {
		t.Fatalf("a second pause gets a second notice; got %d", len(n))
	}
	// The admin command resumes them too.
	if err := e.lb.Reset(context.Background(), e.roomID); err != nil {
		t.Fatal(err)
	}
	if err := e.send(bots[1], true); err != nil {
		t.Fatalf("after reset: %v", err)
	}
}

// The per-minute budget ends by itself when the minute has passed.
func TestLoopBreakerPerMinute(t *testing.T) {
	e := newLoopEnv(t, LoopBreakerSettings{Enabled: true, MaxPerMinute: 3})
	for range 3 {
		if err := e.send("@bot1:test", true); err != nil {
			t.Fatal(err)
		}
		e.clock.Add(10 * time.Second)
	}
	// 30 s after the first message: it leaves the window in 30 s.
	if ms := wantLimit(t, e.send("@bot2:test", true)); ms != 30_000 {
		t.Fatalf("retry_after_ms = %d, want 30000", ms)
	}
	e.clock.Add(31 * time.Second)
	if err := e.send("@bot2:test", true); err != nil {
		t.Fatalf("after the minute: %v", err)
	}
	if n := e.notices(t); len(n) != 1 {
		t.Fatalf("got %d notices, want 1", len(n))
	}
}

// A send that fails gives its budget back; people are never limited; a
// room with the breaker off is not limited either.
func TestLoopBreakerFailuresHumansAndOff(t *testing.T) {
	e := newLoopEnv(t, LoopBreakerSettings{Enabled: true, MaxConsecutive: 2})
	ctx := context.Background()
	for range 5 {
		done, err := e.lb.Admit(ctx, e.roomID, "m.room.message", true)
		if err != nil {
			t.Fatal(err)
		}
		done(false)
	}
	if st, _ := e.lb.Status(ctx, e.roomID); st.Consecutive != 0 || st.LastMinute != 0 {
		t.Fatalf("failed sends were counted: %+v", st)
	}
	for range 10 {
		if err := e.send("@alice:test", false); err != nil {
			t.Fatal(err)
		}
	}
	// Reactions and state do not use the budget.
	if done, err := e.lb.Admit(ctx, e.roomID, "m.reaction", true); err != nil || done != nil {
		t.Fatalf("reaction: %v", err)
	}
	if err := e.lb.Set(ctx, e.roomID, LoopBreakerSettings{Enabled: false, MaxConsecutive: 2}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := e.send("@bot1:test", true); err != nil {
			t.Fatalf("breaker off: %v", err)
		}
	}
	row, err := e.db.LoopBreakerSettings(ctx, e.roomID)
	if err != nil || row.Enabled || row.MaxConsecutive != 2 {
		t.Fatalf("stored settings %+v %v", row, err)
	}
	// A fresh engine (a restart) reads the stored setting.
	lb2 := NewLoopBreaker(e.svc, LoopBreakerOptions{Defaults: LoopBreakerSettings{Enabled: true, MaxConsecutive: 1}})
	if st, _ := lb2.Status(ctx, e.roomID); st.Enabled || !st.Custom {
		t.Fatalf("restart lost the room's setting: %+v", st)
	}
}

// An observer room: agents at 50 and joined, people at 0 with
// events_default 50, world readable, guests may join, published, the loop
// breaker stored on; EnsureObserverRoom is idempotent and adds agents.
func TestObserverRoom(t *testing.T) {
	env := newTestService(t)
	NewLoopBreaker(env.svc, LoopBreakerOptions{ObserverRooms: LoopBreakerSettings{Enabled: true, MaxConsecutive: 7, MaxPerMinute: 9}})
	ctx := context.Background()
	req := ObserverRoomRequest{Name: "lobby", Creator: "@sys:test", Agents: []string{"@agent_a:test", "@agent_b:test"},
		Moderators: []string{"@mod:test"}, Topic: "agents talk"}
	roomID, created, err := env.svc.EnsureObserverRoom(ctx, req)
	if err != nil || !created {
		t.Fatalf("EnsureObserverRoom: %v %v", created, err)
	}
	pl, err := env.svc.PowerLevels(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	if pl.EventsDefault != 50 || pl.UsersDefault != 0 || pl.Users["@agent_a:test"] != 50 || pl.Users["@mod:test"] != 50 || pl.Users["@sys:test"] != 100 {
		t.Fatalf("power levels %+v", pl)
	}
	for _, c := range []struct{ typ, key, want string }{
		{"m.room.history_visibility", "history_visibility", "world_readable"},
		{"m.room.guest_access", "guest_access", "can_join"},
		{"m.room.join_rules", "join_rule", "public"},
		{"m.room.topic", "topic", "agents talk"},
		{"m.room.canonical_alias", "alias", "#lobby:test"},
	} {
		ev, _ := env.svc.CurrentStateEvent(ctx, roomID, c.typ, "")
		var m map[string]any
		if ev != nil {
			_ = json.Unmarshal(ev.Content(), &m)
		}
		if m[c.key] != c.want {
			t.Errorf("%s.%s = %v, want %s", c.typ, c.key, m[c.key], c.want)
		}
	}
	if r, _ := env.db.RoomByID(ctx, roomID); r == nil || !r.Published {
		t.Errorf("observer room is not published")
	}
	for _, a := range req.Agents {
		if m, _ := env.svc.Membership(ctx, roomID, a); m != spec.Join {
			t.Errorf("%s: membership %q", a, m)
		}
	}
	if row, err := env.db.LoopBreakerSettings(ctx, roomID); err != nil || !row.Enabled || row.MaxConsecutive != 7 || row.MaxPerMinute != 9 {
		t.Errorf("loop breaker row %+v %v", row, err)
	}
	// A person may join but not post; an agent may post.
	if _, err := env.svc.ChangeMembership(ctx, roomID, MembershipRequest{Sender: "@human:test", Target: "@human:test", Membership: spec.Join}); err != nil {
		t.Fatal(err)
	}
	msg := json.RawMessage(`{"msgtype":"m.text","body":"x"}`)
	var re mautrix.RespError
	if _, err := env.svc.Send(ctx, roomID, EventRequest{Sender: "@human:test", Type: "m.room.message", Content: msg}); !errors.As(err, &re) || re.ErrCode != "M_FORBIDDEN" {
		t.Fatalf("human post: %v", err)
	}
	if _, err := env.svc.Send(ctx, roomID, EventRequest{Sender: "@agent_b:test", Type: "m.room.message", Content: msg}); err != nil {
		t.Fatalf("agent post: %v", err)
	}

	// Again, with one more agent: same room, the new agent gets 50 and joins.
	req.Agents = append(req.Agents, "@agent_c:test")
	again, created, err := env.svc.EnsureObserverRoom(ctx, req)
	if err != nil || created || again != roomID {
		t.Fatalf("second EnsureObserverRoom: %s %v %v", again, created, err)
	}
	if lvl, _ := env.svc.UserPowerLevel(ctx, roomID, "@agent_c:test"); lvl != 50 {
		t.Fatalf("new agent level %d", lvl)
	}
	if m, _ := env.svc.Membership(ctx, roomID, "@agent_c:test"); m != spec.Join {
		t.Fatalf("new agent membership %q", m)
	}
	evs, _ := env.db.RoomEvents(ctx, roomID, 0, 1<<62, false, 1000, nil)
	n := len(evs)
	if _, _, err := env.svc.EnsureObserverRoom(ctx, req); err != nil {
		t.Fatal(err)
	}
	evs, _ = env.db.RoomEvents(ctx, roomID, 0, 1<<62, false, 1000, nil)
	if len(evs) != n {
		t.Fatalf("a third identical call sent %d events", len(evs)-n)
	}

	// Private: invite-only, not published, members-only history, no guests.
	priv, err := env.svc.CreateObserverRoom(ctx, ObserverRoomRequest{Name: "backroom", Creator: "@sys:test",
		Agents: []string{"@agent_a:test"}, Private: true, Invite: []string{"@watcher:test"}})
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := env.db.RoomByID(ctx, priv); r.Published {
		t.Errorf("private room is published")
	}
	if m, _ := env.svc.Membership(ctx, priv, "@agent_a:test"); m != spec.Join {
		t.Errorf("agent not joined to the private room: %q", m)
	}
	if m, _ := env.svc.Membership(ctx, priv, "@watcher:test"); m != spec.Invite {
		t.Errorf("observer not invited: %q", m)
	}
	if _, err := env.svc.ChangeMembership(ctx, priv, MembershipRequest{Sender: "@human:test", Target: "@human:test", Membership: spec.Join}); err == nil {
		t.Errorf("an uninvited person joined the private room")
	}
	if _, err := env.svc.CreateObserverRoom(ctx, ObserverRoomRequest{Name: "bad name", Creator: "@sys:test"}); err == nil {
		t.Errorf("a name with a space was accepted")
	}
	if _, err := env.svc.CreateObserverRoom(ctx, ObserverRoomRequest{Name: "lobby", Creator: "@sys:test"}); err == nil {
		t.Errorf("a taken alias was accepted")
	}
}
