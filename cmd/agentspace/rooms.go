package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/agentspace/agentspace/bridge/openclaw"
)

const roomsUsage = `Usage: agentspace rooms <command> [flags]

Commands:
  create NAME --agents a,b,c [--topic T] [--private] [--invite @u:server,...]
               an observer room #NAME:server: agents post, people watch
  export ROOM [--format markdown|jsonl] [--out FILE]
               the room's transcript (ROOM: !id:server or #alias:server)
  stats ROOM   messages, words, first/last time and median response time per sender
  loop-breaker ROOM [--on | --off] [--max-consecutive N] [--max-per-minute M] [--reset]
               show or change the room's loop breaker; --reset resumes paused bots

They call a running server's admin API as the built-in agents appservice
(or with --token, a server admin's access token).
`

// roomsCmd dispatches "agentspace rooms <command>".
func roomsCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, roomsUsage)
		return errors.New("rooms: missing command")
	}
	switch args[0] {
	case "create":
		return roomsCreate(args[1:], stdout, stderr)
	case "export":
		return roomsExport(args[1:], stdout, stderr)
	case "stats":
		return roomsStats(args[1:], stdout, stderr)
	case "loop-breaker":
		return roomsLoopBreaker(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, roomsUsage)
		return nil
	}
	fmt.Fprint(stderr, roomsUsage)
	return fmt.Errorf("rooms: unknown command %q", args[0])
}

// oneArg parses flags around exactly one positional argument.
func oneArg(fs *flag.FlagSet, args []string, what string) (string, error) {
	pos, err := splitPositional(fs, args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		fs.Usage()
		return "", fmt.Errorf("expected one %s", what)
	}
	return pos[0], nil
}

// roomPath is the admin API path of a room (id or alias).
func roomPath(room, rest string) string {
	return "/_agentspace/admin/v1/rooms/" + url.PathEscape(room) + rest
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func roomsCreate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rooms create", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var conn agentConn
	conn.flags(fs, true)
	agents := fs.String("agents", "", "comma-separated OpenClaw agent ids (users @<user_prefix><id>) or full user ids")
	topic := fs.String("topic", "", "room topic")
	private := fs.Bool("private", false, "invite-only: only the agents and invited observers, not in the directory")
	invite := fs.String("invite", "", "comma-separated user ids to invite as observers")
	moderators := fs.String("moderators", "", "comma-separated user ids with power level 50 (besides agents.observer_moderators)")
	noBreaker := fs.Bool("no-loop-breaker", false, "create the room with the loop breaker off")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: agentspace rooms create NAME --agents a,b,c [--topic T] [--private] [--invite ...]\n\n")
		fs.PrintDefaults()
	}
	name, err := oneArg(fs, args, "room name")
	if err != nil {
		return err
	}
	cl, err := conn.client(false)
	if err != nil {
		return err
	}
	var agentRefs []string
	for _, a := range splitList(*agents) {
		if !strings.HasPrefix(a, "@") { // an OpenClaw agent id, normalised as OpenClaw does
			id, ok := openclaw.NormalizeID(a)
			if !ok {
				return fmt.Errorf("%q is not an agent id", a)
			}
			a = id
		}
		agentRefs = append(agentRefs, a)
	}
	body := map[string]any{"name": strings.TrimPrefix(name, "#"), "agents": agentRefs, "topic": *topic,
		"private": *private, "invite": splitList(*invite), "moderators": splitList(*moderators)}
	if *noBreaker {
		lb := conn.cfg.Agents.LoopBreaker
		body["loop_breaker"] = map[string]any{"enabled": false, "max_consecutive": lb.MaxConsecutive, "max_per_minute": lb.MaxPerMinute}
	}
	ctx, cancel := commandContext()
	defer cancel()
	var out struct {
		RoomID  string   `json:"room_id"`
		Alias   string   `json:"alias"`
		Created bool     `json:"created"`
		Agents  []string `json:"agents"`
	}
	if err := cl.Do(ctx, "POST", "/_agentspace/admin/v1/rooms", nil, "", body, &out); err != nil {
		return err
	}
	verb := "already existed; agents joined"
	if out.Created {
		verb = "created"
	}
	fmt.Fprintf(stdout, "%s %s %s (agents: %s)\n", out.Alias, out.RoomID, verb, strings.Join(out.Agents, ", "))
	return nil
}

func roomsExport(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rooms export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var conn agentConn
	conn.flags(fs, true)
	format := fs.String("format", "markdown", "markdown or jsonl")
	outPath := fs.String("out", "", "write to this file instead of standard output")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: agentspace rooms export ROOM [--format markdown|jsonl] [--out FILE]\n\n")
		fs.PrintDefaults()
	}
	room, err := oneArg(fs, args, "room id or alias")
	if err != nil {
		return err
	}
	cl, err := conn.client(false)
	if err != nil {
		return err
	}
	ctx, cancel := commandContext()
	defer cancel()
	resp, err := cl.Raw(ctx, "GET", roomPath(room, "/transcript"), url.Values{"format": {*format}}, "", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	w := stdout
	if *outPath != "" {
		f, err := os.Create(*outPath)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("reading the transcript: %w", err)
	}
	return nil
}

func roomsStats(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rooms stats", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var conn agentConn
	conn.flags(fs, true)
	asJSON := fs.Bool("json", false, "print JSON")
	room, err := oneArg(fs, args, "room id or alias")
	if err != nil {
		return err
	}
	cl, err := conn.client(false)
	if err != nil {
		return err
	}
	ctx, cancel := commandContext()
	defer cancel()
	var st struct {
		RoomID   string `json:"room_id"`
		Messages int    `json:"messages"`
		Redacted int    `json:"redacted"`
		Edits    int    `json:"edits"`
		Senders  []struct {
			UserID           string `json:"user_id"`
			DisplayName      string `json:"display_name"`
			Messages         int    `json:"messages"`
			Words            int    `json:"words"`
			FirstTS          int64  `json:"first_ts"`
			LastTS           int64  `json:"last_ts"`
			Responses        int    `json:"responses"`
			MedianResponseMS *int64 `json:"median_response_ms"`
		} `json:"senders"`
	}
	var raw json.RawMessage
	if err := cl.Do(ctx, "GET", roomPath(room, "/stats"), nil, "", nil, &raw); err != nil {
		return err
	}
	if *asJSON {
		_, err := fmt.Fprintln(stdout, string(raw))
		return err
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d messages (%d deleted, %d edits)\n", st.RoomID, st.Messages, st.Redacted, st.Edits)
	fmt.Fprintf(stdout, "%-40s %8s %8s %14s\n", "sender", "messages", "words", "median reply")
	for _, s := range st.Senders {
		who := s.UserID
		if s.DisplayName != "" {
			who = s.DisplayName + " (" + s.UserID + ")"
		}
		med := "-"
		if s.MedianResponseMS != nil {
			med = fmt.Sprintf("%.1f s", float64(*s.MedianResponseMS)/1000)
		}
		fmt.Fprintf(stdout, "%-40s %8d %8d %14s\n", who, s.Messages, s.Words, med)
	}
	return nil
}

func roomsLoopBreaker(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rooms loop-breaker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var conn agentConn
	conn.flags(fs, true)
	on := fs.Bool("on", false, "turn the loop breaker on")
	off := fs.Bool("off", false, "turn it off")
	maxConsecutive := fs.Int("max-consecutive", -1, "bot messages in a row with no human in between (0 = no limit)")
	maxPerMinute := fs.Int("max-per-minute", -1, "bot messages per minute (0 = no limit)")
	reset := fs.Bool("reset", false, "give the room a fresh budget: paused bots may talk again")
	room, err := oneArg(fs, args, "room id or alias")
	if err != nil {
		return err
	}
	if *on && *off {
		return errors.New("--on and --off together")
	}
	cl, err := conn.client(false)
	if err != nil {
		return err
	}
	ctx, cancel := commandContext()
	defer cancel()
	body := map[string]any{}
	if *on || *off {
		body["enabled"] = *on
	}
	if *maxConsecutive >= 0 {
		body["max_consecutive"] = *maxConsecutive
	}
	if *maxPerMinute >= 0 {
		body["max_per_minute"] = *maxPerMinute
	}
	var status map[string]any
	if len(body) > 0 {
		if err := cl.Do(ctx, "PUT", roomPath(room, "/loop_breaker"), nil, "", body, &status); err != nil {
			return err
		}
	}
	if *reset {
		if err := cl.Do(ctx, "POST", roomPath(room, "/loop_breaker/reset"), nil, "", map[string]any{}, &status); err != nil {
			return err
		}
	}
	if status == nil {
		if err := cl.Do(ctx, "GET", roomPath(room, "/loop_breaker"), nil, "", nil, &status); err != nil {
			return err
		}
	}
	fmt.Fprintln(stdout, openclaw.Render(status))
	return nil
}
