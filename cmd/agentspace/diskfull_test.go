package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Disk full and read-only storage: the server runs with its data directory
// on a small tmpfs. When the disk fills up (or the file system turns
// read-only), writes must fail with a 5xx M_UNKNOWN and an error log line,
// reads must keep working, nothing stored may be damaged, and once space
// (or write access) returns the server must work again without a restart:
// the refused sends, retried with their txnIds, are stored exactly once.
// Mounting needs root (CAP_SYS_ADMIN); elsewhere the test is skipped.

// mountTmpfs mounts a tmpfs of size bytes on a fresh directory, unmounted at cleanup.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("cannot mount a tmpfs (%v): this test needs root or CAP_SYS_ADMIN", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// fillDisk writes a file until the file system is full and returns its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 16<<10)
	for i := 0; ; i++ {
		if _, err := f.Write(chunk); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return path
			}
			t.Fatalf("filling disk: %v", err)
		}
		if i > 1<<16 {
			t.Fatal("disk never filled up")
		}
	}
}

// wantServerError asserts a 5xx M_UNKNOWN answer.
func wantServerError(t *testing.T, what string, status int, out map[string]any, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: transport error %v (the server must answer, not drop the connection)", what, err)
	}
	if status < 500 || status > 599 || out["errcode"] != "M_UNKNOWN" {
		t.Fatalf("%s: got %d %v, want 5xx M_UNKNOWN", what, status, out)
	}
}

func TestDiskFullAndReadOnly(t *testing.T) {
	mnt := mountTmpfs(t, 6<<20)
	dbPath := filepath.Join(mnt, "agentspace.db")
	p := startLiveProc(t, "DB_PATH="+dbPath)
	alice := registerUser(t, p.URL, "alice")
	roomID := alice.must(t, 200, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "private_chat"})["room_id"].(string)
	sendPath := func(txn string) string {
		return "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + txn
	}
	acked := map[string]string{} // body (= txnId) → event_id
	send := func(txn, pad string) (int, map[string]any, error) {
		status, out, err := alice.do("PUT", sendPath(txn), map[string]any{"msgtype": "m.text", "body": txn, "pad": pad})
		if err == nil && status == 200 {
			acked[txn] = out["event_id"].(string)
		}
		return status, out, err
	}
	for i := 0; i < 20; i++ {
		if status, out, err := send(fmt.Sprintf("before-%d", i), ""); status != 200 {
			t.Fatalf("send before the disk filled: %d %v %v", status, out, err)
		}
	}
	_, sinceFull, _ := alice.do("GET", "/_matrix/client/v3/sync?timeout=0", nil)
	since := sinceFull["next_batch"].(string)

	// 1. Disk full. The WAL reuses space it already has, so some writes may
	// still succeed; keep writing big events until one is refused.
	filler := fillDisk(t, mnt)
	pad := strings.Repeat("x", 32<<10)
	var refused []string
	for i := 0; i < 400 && len(refused) == 0; i++ {
		txn := fmt.Sprintf("full-%d", i)
		status, out, err := send(txn, pad)
		if status != 200 {
			wantServerError(t, "send on a full disk", status, out, err)
			refused = append(refused, txn)
		}
	}
	if len(refused) == 0 {
		t.Fatal("400 sends of 32 KiB succeeded on a full 6 MiB file system")
	}
	// A few more refusals: the server must not wedge.
	for i := 0; i < 3; i++ {
		txn := fmt.Sprintf("full-more-%d", i)
		status, out, err := send(txn, pad)
		if status != 200 {
			wantServerError(t, "repeated send on a full disk", status, out, err)
			refused = append(refused, txn)
		}
	}
	logLine := ""
	for _, l := range strings.Split(p.log.String(), "\n") {
		if strings.Contains(l, `"level":"ERROR"`) && strings.Contains(l, "full") {
			logLine = l
			break
		}
	}
	if logLine == "" {
		t.Fatalf("no error log line about the full disk:\n%s", p.log.String())
	}
	t.Logf("log line: %s", logLine)
	// Media uploads fail the same way and leave no partial file behind.
	status, out, err := alice.do("POST", "/_matrix/media/v3/upload?filename=big.bin", bytes.Repeat([]byte{7}, 256<<10))
	wantServerError(t, "upload on a full disk", status, out, err)
	if tmp, _ := filepath.Glob(filepath.Join(mnt, "media", "*", "*", ".*tmp*")); len(tmp) > 0 {
		t.Fatalf("partial upload files left behind: %v", tmp)
	}
	// Reads keep working and see everything acknowledged, nothing refused.
	checkRoom(t, alice, roomID, acked, refused)
	alice.must(t, 200, "GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since), nil)

	// 2. Space returns: the server recovers without a restart; refused
	// sends retried with their txnIds are stored exactly once.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for _, txn := range refused {
		if status, out, err := send(txn, ""); status != 200 {
			t.Fatalf("retry of %s after space returned: %d %v %v\n%s", txn, status, out, err, p.log.String())
		}
	}
	refusedCount := len(refused)
	refused = nil
	if status, out, err := send("after-full", ""); status != 200 {
		t.Fatalf("send after space returned: %d %v %v", status, out, err)
	}
	alice.must(t, 200, "POST", "/_matrix/media/v3/upload?filename=small.bin", bytes.Repeat([]byte{7}, 1024))
	checkRoom(t, alice, roomID, acked, nil)

	// 3. The file system turns read-only under the running server.
	roErr := syscall.Mount("", mnt, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, "")
	if roErr != nil {
		// The kernel refuses to remount while files are open for writing
		// (EBUSY), which the running server always has.
		t.Logf("read-only remount under the running server not possible (%v); checking start-up on a read-only file system instead", roErr)
	} else {
		status, out, err := send("readonly-0", "")
		wantServerError(t, "send on a read-only file system", status, out, err)
		checkRoom(t, alice, roomID, acked, []string{"readonly-0"})
		if err := syscall.Mount("", mnt, "", syscall.MS_REMOUNT, ""); err != nil {
			t.Fatalf("remount read-write: %v", err)
		}
		if status, out, err := send("readonly-0", ""); status != 200 {
			t.Fatalf("send after the file system is writable again: %d %v %v", status, out, err)
		}
	}

	p.stop()
	checkSQLiteIntegrity(t, dbPath)

	// 4. Starting on a read-only file system fails at once with a clear
	// message instead of serving requests that cannot be stored.
	if err := syscall.Mount("", mnt, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount read-only with the server stopped: %v", err)
	}
	out2, startErr := runToExit(t, 20*time.Second, "DB_PATH="+dbPath, "PORT=0", "BIND_ADDRESS=127.0.0.1")
	if startErr == nil {
		t.Fatalf("server started on a read-only file system:\n%s", out2)
	}
	if !strings.Contains(strings.ToLower(out2), "read-only") && !strings.Contains(strings.ToLower(out2), "readonly") {
		t.Errorf("start-up failure on a read-only file system does not say so:\n%s", out2)
	}
	t.Logf("start-up on a read-only file system: %s", strings.TrimSpace(out2))
	if strings.Contains(out2, "panic") {
		t.Errorf("start-up on a read-only file system panicked:\n%s", out2)
	}
	if err := syscall.Mount("", mnt, "", syscall.MS_REMOUNT, ""); err != nil {
		t.Fatalf("remount read-write: %v", err)
	}
	checkSQLiteIntegrity(t, dbPath)
	t.Logf("disk full: %d sends refused with 5xx M_UNKNOWN, all stored exactly once after space returned; %d events intact", refusedCount, len(acked))
}

// checkRoom asserts that /messages holds every acknowledged message exactly
// once and none of the refused ones.
func checkRoom(t *testing.T, c *mxClient, roomID string, acked map[string]string, refused []string) {
	t.Helper()
	seen := map[string]int{}
	for _, e := range allMessages(t, c, roomID) {
		seen[e.Content.Body]++
		if want, ok := acked[e.Content.Body]; ok && want != e.EventID {
			t.Fatalf("%s stored as %s, acknowledged as %s", e.Content.Body, e.EventID, want)
		}
	}
	for body := range acked {
		if seen[body] != 1 {
			t.Fatalf("acknowledged %s appears %d times", body, seen[body])
		}
	}
	for _, body := range refused {
		if seen[body] != 0 {
			t.Fatalf("refused send %s was stored anyway", body)
		}
	}
}

// runToExit runs the binary with env and returns its output once it exits
// (an error if it is still running after limit, or exited non-zero).
func runToExit(t *testing.T, limit time.Duration, env ...string) (string, error) {
	t.Helper()
	out := &lockedBuffer{}
	p := &liveProc{t: t, log: out, done: make(chan error, 1)}
	p.cmd = newServerCmd(t, env...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	select {
	case err := <-p.done:
		return out.String(), err
	case <-time.After(limit):
		p.kill()
		t.Fatalf("server neither started nor failed within %s:\n%s", limit, out.String())
		return "", nil
	}
}
