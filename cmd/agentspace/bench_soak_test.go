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

	"maunium.net/go/mautrix/event"
)

// TestBenchSoakSmoke runs a 20-second soak (3 bots, 3 observers, one room)
// through the built binary and checks the report: every acknowledged
// message reached every observer once, no errors, a time series with the
// server's memory and goroutines, and a PASS verdict.
func TestBenchSoakSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server for 20 s")
	}
	bin := agentspaceBinary(t)
	out := filepath.Join(t.TempDir(), "soak.json")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bench", "soak", "--duration", "20s", "--interval", "5s", "--warmup", "5s",
		"--bots", "3", "--observers", "3", "--rooms", "1", "--rate", "2", "--json", out)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench soak: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("soak report:\n%s", stdout.String())
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res soakResult
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatalf("JSON report: %v\n%s", err, data)
	}
	// 3 bots × 2 msg/s × 20 s, less start-up spread and scheduling slack.
	if res.Sent < 90 || res.Sent > 126 {
		t.Errorf("sent %d messages, want about 120", res.Sent)
	}
	if res.Delivered != 3*res.Sent || res.Missing != 0 || res.Duplicates != 0 || res.Errors != 0 {
		t.Errorf("sent %d, delivered %d (want 3×), missing %d, duplicates %d, errors %d %v",
			res.Sent, res.Delivered, res.Missing, res.Duplicates, res.Errors, res.ErrorSamples)
	}
	// Baseline, four intervals, tail (the last tick may coincide with the end).
	if len(res.Samples) < 5 {
		t.Fatalf("%d samples, want at least 5", len(res.Samples))
	}
	for i, s := range res.Samples {
		if s.RSSMB <= 0 || s.HeapInuseMB <= 0 || s.Goroutines <= 0 {
			t.Errorf("sample %d lacks resources: %+v", i, s)
		}
	}
	if mid := res.Samples[2]; mid.Sent == 0 || mid.Send.P99Ms <= 0 || mid.Delivery.P99Ms <= 0 {
		t.Errorf("sample 2 has no traffic: %+v", mid)
	}
	if res.Send.P99Ms <= 0 || res.Delivery.P99Ms <= 0 || res.Growth.FromSec < 5 {
		t.Errorf("summary: send %+v delivery %+v growth %+v", res.Send, res.Delivery, res.Growth)
	}
	if !strings.Contains(stdout.String(), "verdict: PASS") {
		t.Errorf("no PASS verdict in the report")
	}
}

func TestSoakAnalysis(t *testing.T) {
	metrics := `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 42
go_memstats_heap_inuse_bytes 1.048576e+07
http_requests_total{code="200"} 7
`
	m, err := soakParseMetrics(strings.NewReader(metrics))
	if err != nil || m["go_goroutines"] != 42 || m["go_memstats_heap_inuse_bytes"] != 10485760 || len(m) != 2 {
		t.Errorf("soakParseMetrics = %v, %v", m, err)
	}
	if _, err := soakParseMetrics(strings.NewReader("up 1\n")); err == nil {
		t.Error("metrics without go_goroutines accepted")
	}

	// 0 s baseline, warm-up growth until 300 s, flat after, then the tail.
	samples := []soakSample{
		{ElapsedSec: 0, RSSMB: 30, HeapInuseMB: 5, Goroutines: 10},
		{ElapsedSec: 150, RSSMB: 50, HeapInuseMB: 12, Goroutines: 110},
		{ElapsedSec: 300, RSSMB: 60, HeapInuseMB: 14, Goroutines: 112},
		{ElapsedSec: 450, RSSMB: 60, HeapInuseMB: 13, Goroutines: 111},
		{ElapsedSec: 600, RSSMB: 61, HeapInuseMB: 14, Goroutines: 113},
		{ElapsedSec: 610, RSSMB: 58, HeapInuseMB: 9, Goroutines: 12},
	}
	g := soakGrowthOf(samples, 5*time.Minute)
	if g.FromSec != 300 || g.RSSMB != 1 || g.HeapInuseMB != 0 || g.Goroutines != 1 {
		t.Errorf("growth = %+v, want from 300 s: +1 MB RSS, +0 heap, +1 goroutine", g)
	}
	if g.RSSSlopeMBPerH < 11.9 || g.RSSSlopeMBPerH > 12.1 { // least squares over 60, 60, 61 MB at 300, 450, 600 s
		t.Errorf("slope = %.2f MB/h, want 12", g.RSSSlopeMBPerH)
	}
	// A leak fails the check.
	leak := []soakSample{{ElapsedSec: 0, RSSMB: 30}, {ElapsedSec: 300, RSSMB: 40}, {ElapsedSec: 600, RSSMB: 80}, {ElapsedSec: 610, RSSMB: 80}}
	res := &soakResult{Growth: soakGrowthOf(leak, 5*time.Minute)}
	checks := soakChecks(res, &soakOptions{maxGrowthMB: 10, bots: 1, observers: 1})
	if checks[0].Result != "FAIL" || !strings.Contains(checks[0].Value, "+40.0 MB") {
		t.Errorf("leak check: %+v", checks[0])
	}

	w := soakWorst([]latencyStats{{Count: 2, P50Ms: 1, P99Ms: 9}, {}, {Count: 3, P50Ms: 2, P99Ms: 4}})
	if w.Count != 5 || w.P50Ms != 2 || w.P99Ms != 9 {
		t.Errorf("soakWorst = %+v", w)
	}

	evt := &event.Event{Type: event.EventMessage}
	evt.Content.Raw = map[string]any{"body": "soak run1 7 42 1700000000000000000"}
	bot, seq, at, ok := soakParseBody(evt, "run1")
	if !ok || bot != 7 || seq != 42 || at.UnixNano() != 1700000000000000000 {
		t.Errorf("soakParseBody = %d %d %v %v", bot, seq, at, ok)
	}
	if _, _, _, ok := soakParseBody(evt, "other"); ok {
		t.Error("a message of another run was counted")
	}
}
