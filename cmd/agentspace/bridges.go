package main

// bridges.go implements "agentspace bridges status": the state of each
// webhook and hook of a running server, read from its admin endpoint
// GET /_agentspace/admin/v1/bridges (the server keeps the cursors; asking it
// rather than the database also works with PostgreSQL and remote servers).

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

const bridgesUsage = `Usage: agentspace bridges status [--server URL] [--token TOKEN] [--json]

Shows each webhook and hook (bridges.webhooks and hooks in the configuration)
of a running server: its target (scheme and host; the rest of a webhook URL is
secret), the events not yet delivered and the age of the oldest (lag), the
last success and the last error.

The token is a server admin's access token: --token or AGENTSPACE_ADMIN_TOKEN.
The server is --server, AGENTSPACE_SERVER or http://localhost:8008.
`

// bridgeStatus mirrors webhook.Status (the admin endpoint's JSON).
type bridgeStatus struct {
	Name          string   `json:"name"`
	Type          string   `json:"type"`
	Kind          string   `json:"kind"`
	Target        string   `json:"target"`
	Rooms         []string `json:"rooms"`
	DeliveredPos  int64    `json:"delivered_stream_position"`
	PendingTxnID  *int64   `json:"pending_txn_id"`
	Backlog       int64    `json:"backlog"`
	LagMS         int64    `json:"lag_ms"`
	LastSuccessTS int64    `json:"last_success_ts"`
	LastError     string   `json:"last_error"`
	LastErrorTS   int64    `json:"last_error_ts"`
	Failures      int64    `json:"consecutive_failures"`
}

func bridgesCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "status" {
		fmt.Fprint(stderr, bridgesUsage)
		if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			return flag.ErrHelp
		}
		return fmt.Errorf("bridges: unknown command %q", args[0])
	}
	fs := flag.NewFlagSet("bridges status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, bridgesUsage) }
	server := fs.String("server", envOr("AGENTSPACE_SERVER", "http://localhost:8008"), "server base URL")
	token := fs.String("token", os.Getenv("AGENTSPACE_ADMIN_TOKEN"), "admin access token")
	asJSON := fs.Bool("json", false, "print the server's JSON")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *token == "" {
		return errors.New("bridges status: an admin access token is needed (--token or AGENTSPACE_ADMIN_TOKEN)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(*server, "/")+"/_agentspace/admin/v1/bridges", nil)
	if err != nil {
		return fmt.Errorf("bridges status: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+*token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("bridges status: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("bridges status: reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ ErrCode, Error string }
		_ = json.Unmarshal(body, &e)
		return fmt.Errorf("bridges status: server answered HTTP %d %s: %s", resp.StatusCode, e.ErrCode, e.Error)
	}
	if *asJSON {
		_, err := stdout.Write(append(body, '\n'))
		return err
	}
	var out struct {
		Bridges []bridgeStatus `json:"bridges"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return fmt.Errorf("bridges status: unexpected answer: %w", err)
	}
	writeBridgeStatus(stdout, out.Bridges, time.Now())
	return nil
}

// writeBridgeStatus prints one line per webhook or hook.
func writeBridgeStatus(w io.Writer, list []bridgeStatus, now time.Time) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no webhooks or hooks configured (bridges.webhooks, hooks)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tTYPE\tKIND\tTARGET\tBACKLOG\tLAG\tLAST SUCCESS\tFAILURES\tLAST ERROR")
	for _, b := range list {
		lastErr := "-"
		if b.LastError != "" {
			lastErr = bridgeAgo(b.LastErrorTS, now) + ": " + bridgeOneLine(b.LastError, 120)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", b.Name, b.Type, b.Kind, b.Target, b.Backlog,
			(time.Duration(b.LagMS) * time.Millisecond).Round(time.Millisecond).String(), bridgeAgo(b.LastSuccessTS, now), b.Failures, lastErr)
	}
	_ = tw.Flush()
}

// ago renders a millisecond timestamp as "12s ago" ("never" for 0).
func bridgeAgo(ts int64, now time.Time) string {
	if ts == 0 {
		return "never"
	}
	return now.Sub(time.UnixMilli(ts)).Round(time.Second).String() + " ago"
}

func bridgeOneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}
