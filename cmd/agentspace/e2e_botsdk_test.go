package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

const botSDKDir = "testdata/botsdk"

// nodeScript is a node process whose "E2E <step> <args>" stdout lines the
// test waits for; everything it prints is kept for failure messages.
type nodeScript struct {
	cmd   *exec.Cmd
	steps chan []string
	done  chan struct{} // closed when the script exited and all output was read
	err   error         // the exit status, once done is closed
	mu    sync.Mutex
	out   bytes.Buffer
}

func startNodeScript(t *testing.T, ctx context.Context, node, dir, script string, env ...string) *nodeScript {
	t.Helper()
	s := &nodeScript{steps: make(chan []string, 16), done: make(chan struct{})}
	s.cmd = exec.CommandContext(ctx, node, "--no-deprecation", script)
	s.cmd.Dir = dir
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stderr = lockedWriter{s}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			_, _ = lockedWriter{s}.Write([]byte(line + "\n"))
			if f := strings.Fields(line); len(f) > 1 && f[0] == "E2E" {
				s.steps <- f[1:]
			}
		}
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill() // an error when it has exited already
		<-s.done
	})
	return s
}

type lockedWriter struct{ s *nodeScript }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.out.Write(p)
}

func (s *nodeScript) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// step waits for the script's next step line, which must be name, and
// returns its arguments.
func (s *nodeScript) step(t *testing.T, name string, srv *serverProc) []string {
	t.Helper()
	check := func(f []string) []string {
		t.Helper()
		if f[0] != name {
			t.Fatalf("script step %v, want %q\nscript output:\n%s", f, name, s.output())
		}
		return f[1:]
	}
	select {
	case f := <-s.steps:
		return check(f)
	case <-s.done:
		select { // all output was read before done closed
		case f := <-s.steps:
			return check(f)
		default:
		}
		t.Fatalf("script exited (%v) before step %q\nscript output:\n%s\nserver log:\n%s", s.err, name, s.output(), srv.output.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("no step %q within 60s\nscript output:\n%s", name, s.output())
	}
	return nil
}

// TestBotSDKAppservice runs an echo bot on matrix-bot-sdk's Appservice
// (testdata/botsdk/echo.mjs, Node 22) against the real binary: the
// registration comes from `agentspace appservice new`, a normal user invites
// the bot's intent into a room, the intent joins, and the bot answers the
// user's message, which the user then sees through /sync and /messages.
func TestBotSDKAppservice(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	node := nodeFromNPM(t, botSDKDir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	regPath := filepath.Join(dir, "echo.yaml")
	out, err := exec.CommandContext(ctx, agentspaceBinary(t), "appservice", "new", "--id", "botsdk",
		"--url", "http://127.0.0.1:"+strconv.Itoa(freePort(t)), "--users", `@agent_.*:localhost`,
		"--sender", "botsdkbot", "--out", regPath).CombinedOutput()
	if err != nil {
		t.Fatalf("appservice new: %v\n%s", err, out)
	}
	srv := startServerProc(t, dir, freePort(t), "APPSERVICE_REGISTRATIONS="+regPath)

	human := mautrixUser(t, ctx, srv.URL, "human")
	bot := startNodeScript(t, ctx, node, botSDKDir, "echo.mjs",
		"REGISTRATION="+regPath, "HS_URL="+srv.URL, "HS_NAME=localhost",
		"BOT_SUFFIX=echo", "HUMAN="+human.UserID.String())
	const botID = id.UserID("@agent_echo:localhost")
	if got := bot.step(t, "ready", srv); len(got) != 1 || got[0] != botID.String() {
		t.Fatalf("bot ready as %v, want %s", got, botID)
	}

	room, err := human.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "echo", Invite: []id.UserID{botID}})
	if err != nil {
		t.Fatal(err)
	}
	if got := bot.step(t, "joined", srv); len(got) != 1 || got[0] != room.RoomID.String() {
		t.Fatalf("bot joined %v, want %s", got, room.RoomID)
	}
	members, err := human.JoinedMembers(ctx, room.RoomID)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := members.Joined[botID]; !ok {
		t.Fatalf("bot not among the joined members: %v", members.Joined)
	}

	waiter := newEventWaiter(human, event.EventMessage)
	startSync(t, ctx, human)
	if _, err := human.SendText(ctx, room.RoomID, "hello bot"); err != nil {
		t.Fatal(err)
	}
	answered := bot.step(t, "answered", srv)
	if len(answered) != 2 || answered[0] != room.RoomID.String() {
		t.Fatalf("bot answered %v, want room %s", answered, room.RoomID)
	}
	// The answer reaches the appservice too (its sender is in the namespace).
	if got := bot.step(t, "delivered", srv); len(got) != 1 || got[0] != answered[1] {
		t.Fatalf("bot saw %v delivered, want its answer %s", got, answered[1])
	}
	select {
	case <-bot.done:
		if bot.err != nil {
			t.Fatalf("bot exit: %v\nscript output:\n%s", bot.err, bot.output())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("bot did not exit after its answer was delivered\nscript output:\n%s", bot.output())
	}

	echo := waiter.wait(t, "the echo in /sync", func(e *event.Event) bool {
		return e.RoomID == room.RoomID && e.Sender == botID
	})
	if echo.ID.String() != answered[1] || echo.Content.AsMessage().Body != "echo: hello bot" {
		t.Fatalf("echo in /sync: %s %q, want %s %q", echo.ID, echo.Content.AsMessage().Body, answered[1], "echo: hello bot")
	}
	if got := pageBack(t, ctx, human, room.RoomID); strings.Join(got, "|") != "hello bot|echo: hello bot" {
		t.Fatalf("/messages bodies %q", got)
	}
	t.Logf("matrix-bot-sdk echo bot output:\n%s", bot.output())
	srv.stop()
}
