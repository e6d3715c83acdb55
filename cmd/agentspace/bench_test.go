package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBenchSmoke builds the binary and runs a tiny bench against a child
// server, checking that every observer got every message once, in one order.
func TestBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts a server")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "agentspace")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out := filepath.Join(dir, "bench.json")
	cmd := exec.CommandContext(ctx, bin, "bench",
		"--senders", "2", "--messages", "5", "--observers", "2",
		"--rooms", "2", "--room-messages", "5", "--paginate", "30",
		// A one-event timeline makes limited syncs likely, exercising back-fill.
		"--timeline-limit", "1",
		"--json", out, "--timeout", "2m")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("bench output:\n%s", stdout.String())

	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("reading JSON result: %v", err)
	}
	var res benchResult
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatalf("decoding JSON result: %v\n%s", err, data)
	}
	s := res.Send
	if s == nil {
		t.Fatal("JSON result has no send section")
	}
	if s.Messages != 10 || s.Missing != 0 || s.Duplicates != 0 || !s.SameOrder || len(s.Observers) != 2 {
		t.Errorf("send phase: messages=%d missing=%d duplicates=%d same_order=%v observers=%d; want 10, 0, 0, true, 2",
			s.Messages, s.Missing, s.Duplicates, s.SameOrder, len(s.Observers))
	}
	for i, o := range s.Observers {
		if o.Received != 10 || !o.SameOrder {
			t.Errorf("observer %d: received %d (want 10), same order %v", i, o.Received, o.SameOrder)
		}
	}
	if s.Delivery.Count != 20 {
		t.Errorf("delivery latency pairs = %d, want 20", s.Delivery.Count)
	}
	if s.ReadChecks == 0 || s.ReadFailures != 0 {
		t.Errorf("read-your-writes: %d checks, %d failures", s.ReadChecks, s.ReadFailures)
	}
	if s.CPUPerMessageMs == nil || *s.CPUPerMessageMs < 0 {
		t.Errorf("server CPU per message missing for a child server: %v", s.CPUPerMessageMs)
	}
	if is := res.InitialSync; is == nil || len(is.Variants) != 2 {
		t.Errorf("initial sync section: %+v", is)
	} else {
		for _, v := range is.Variants {
			if !v.AllRooms || v.RoomsSeen != 2 || v.Bytes == 0 {
				t.Errorf("initial sync %s: rooms seen %d, all %v, %d bytes", v.Filter, v.RoomsSeen, v.AllRooms, v.Bytes)
			}
		}
	}
	if p := res.Pagination; p == nil || !p.Correct || p.Returned != 30 {
		t.Errorf("pagination: %+v", p)
	}
	if !res.Resources.Available || res.Resources.PeakRSSMB == nil || *res.Resources.PeakRSSMB <= 0 {
		t.Errorf("resources: %+v", res.Resources)
	}
	if !strings.Contains(stdout.String(), "send throughput") {
		t.Errorf("table output lacks the throughput line:\n%s", stdout.String())
	}
}

// TestBenchFlags checks flag validation without starting anything.
func TestBenchFlags(t *testing.T) {
	var stderr bytes.Buffer
	for _, args := range [][]string{
		{"--senders", "0"},
		{"--paginate", "-1"},
		{"--url", "ftp://x"},
		{"--url", "http://127.0.0.1:1", "--postgres", "postgres://x"},
		{"extra"},
	} {
		if _, err := parseBenchFlags(args, &stderr); err == nil {
			t.Errorf("parseBenchFlags(%q) succeeded, want an error", args)
		}
	}
	o, err := parseBenchFlags(nil, &stderr)
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if o.senders != 10 || o.observers != 20 || o.messages != 200 || o.rooms != 20 || o.roomMessages != 200 || o.paginate != 2000 {
		t.Errorf("defaults = %+v", o)
	}
}

// TestSummarize checks the nearest-rank percentiles.
func TestSummarize(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	s := benchSummarize(ds)
	if s.Count != 100 || s.MinMs != 1 || s.P50Ms != 50 || s.P90Ms != 90 || s.P99Ms != 99 || s.MaxMs != 100 || s.MeanMs != 50.5 {
		t.Errorf("summarize = %+v", s)
	}
	if z := benchSummarize(nil); z.Count != 0 {
		t.Errorf("benchSummarize(nil) = %+v", z)
	}
}

// TestOrderViolations checks the newest-first order verifier.
func TestOrderViolations(t *testing.T) {
	base := time.Now()
	at := func(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }
	// Three sequential sends by one worker, then one overlapping send by another.
	recs := []sendRecord{
		{worker: 0, start: at(0), ret: at(1)},
		{worker: 0, start: at(2), ret: at(3)},
		{worker: 0, start: at(4), ret: at(6)},
		{worker: 1, start: at(5), ret: at(7)},
	}
	if n := benchOrderViolations(recs, []int{3, 2, 1, 0}); n != 0 {
		t.Errorf("correct order: %d violations", n)
	}
	if n := benchOrderViolations(recs, []int{2, 3, 1, 0}); n != 0 {
		t.Errorf("overlapping sends may go either way: %d violations", n)
	}
	if n := benchOrderViolations(recs, []int{0, 1, 2, 3}); n == 0 {
		t.Error("oldest-first listing not detected")
	}
}
