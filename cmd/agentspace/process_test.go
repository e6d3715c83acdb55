package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests run the real binary as a child process on 127.0.0.1.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// agentspaceBinary builds the command once per test run.
func agentspaceBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "agentspace-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "agentspace")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// freePort asks the kernel for an unused loopback port.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// serverProc is a running agentspace child process.
type serverProc struct {
	t      testing.TB
	cmd    *exec.Cmd
	URL    string
	output *bytes.Buffer
	done   chan error
}

// startServerProc starts the binary on dataDir and waits until it is ready.
func startServerProc(t testing.TB, dataDir string, port int, extraEnv ...string) *serverProc {
	t.Helper()
	cmd := exec.Command(agentspaceBinary(t))
	cmd.Env = append(os.Environ(),
		"PORT="+strconv.Itoa(port),
		"BIND_ADDRESS=127.0.0.1",
		"DB_PATH="+filepath.Join(dataDir, "agentspace.db"),
		"ENABLE_REGISTRATION=true",
		"RATE_LIMIT=off",
		"BCRYPT_COST=4",
		"LOG_LEVEL=warn",
	)
	cmd.Env = append(cmd.Env, extraEnv...)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serverProc{t: t, cmd: cmd, URL: fmt.Sprintf("http://127.0.0.1:%d", port), output: out, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { p.kill() })
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(p.URL + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case err := <-p.done:
			t.Fatalf("server exited during start-up: %v\n%s", err, out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("server not ready within 20s\n%s", out.String())
	return nil
}

// stop sends SIGTERM and requires a clean exit within 10 s.
func (p *serverProc) stop() {
	p.t.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			p.t.Fatalf("server exit after SIGTERM: %v\n%s", err, p.output.String())
		}
	case <-time.After(10 * time.Second):
		p.t.Fatalf("server did not exit within 10s of SIGTERM\n%s", p.output.String())
	}
}

func (p *serverProc) kill() {
	if p.cmd.Process != nil && p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	}
}
