package clientapi

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/appservice"
	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// AgentSpace's own admin API for agent rooms, under /_agentspace/admin/v1
// (the Synapse-compatible one is /_synapse/admin, package adminapi):
//
//	POST /rooms                                  create (or complete) an observer room
//	GET  /rooms/{roomIdOrAlias}/transcript       ?format=jsonl|markdown, streamed
//	GET  /rooms/{roomIdOrAlias}/stats            per-sender figures
//	GET  /rooms/{roomIdOrAlias}/loop_breaker     settings and counters
//	PUT  /rooms/{roomIdOrAlias}/loop_breaker     {enabled, max_consecutive, max_per_minute}
//	POST /rooms/{roomIdOrAlias}/loop_breaker/reset
//
// Callers are server admins (users.is_admin or admin_users) or the built-in
// agents appservice's as_token, which the CLI reads from the data directory
// (file mode 0600: whoever can read it can read the database too).

const agentspaceAdminPrefix = "/_agentspace/admin/v1"

// registerAgentspaceAdmin adds the routes above.
func (a *API) registerAgentspaceAdmin(rt routes) {
	p := agentspaceAdminPrefix + "/rooms"
	rt.exact(p, a.authed(a.adminCreateObserverRoom), http.MethodPost)
	rt.exact(p+"/{roomId}/transcript", a.authed(a.adminTranscript), http.MethodGet)
	rt.exact(p+"/{roomId}/stats", a.authed(a.adminRoomStats), http.MethodGet)
	rt.exact(p+"/{roomId}/loop_breaker", a.authed(a.adminLoopBreaker), http.MethodGet, http.MethodPut)
	rt.exact(p+"/{roomId}/loop_breaker/reset", a.authed(a.adminLoopBreakerReset), http.MethodPost)
}

var errNotAgentspaceAdmin = mautrix.MForbidden.WithMessage("You are not a server admin")

// requireAgentspaceAdmin admits server admins and the built-in agents appservice.
func (a *API) requireAgentspaceAdmin(r *http.Request) (*Session, error) {
	s := sessionFrom(r.Context())
	switch {
	case s.AppserviceToken && s.AppserviceID == appservice.BuiltinID:
		return s, nil
	case s.IsAdmin && !s.AppserviceToken:
		return s, nil
	}
	return nil, errNotAgentspaceAdmin
}

// adminRoom resolves {roomId}, a room id or a local alias, to a known room.
func (a *API) adminRoom(r *http.Request) (string, error) {
	v, err := roomVar(r, "roomId")
	if err != nil {
		return "", err
	}
	roomID := v
	switch {
	case strings.HasPrefix(v, "#"):
		if _, _, ok := splitAlias(v); !ok {
			return "", badParam("Invalid room alias %q", v)
		}
		al, err := a.lookupAlias(r.Context(), v)
		if errors.Is(err, storage.ErrNotFound) {
			return "", mautrix.MNotFound.WithMessage("Room alias %s not found", v)
		} else if err != nil {
			return "", err
		}
		roomID = al.RoomID
	case !validRoomID(v):
		return "", badParam("%q is neither a room ID nor a room alias", v)
	}
	if _, err := a.db.RoomByID(r.Context(), roomID); errors.Is(err, storage.ErrNotFound) {
		return "", mautrix.MNotFound.WithMessage("Room %s not found", v)
	} else if err != nil {
		return "", err
	}
	return roomID, nil
}

// observerRoomBody is the body of POST /_agentspace/admin/v1/rooms.
type observerRoomBody struct {
	// Name becomes the alias #name:server and the room name.
	Name        string `json:"name"`
	DisplayName string `json:"display_name"`
	// Agents are OpenClaw agent ids (user @<user_prefix><id>:server, created
	// in the built-in namespace when missing) or full local user ids.
	Agents      []string                   `json:"agents"`
	Topic       string                     `json:"topic"`
	Private     bool                       `json:"private"`
	Invite      []string                   `json:"invite"`
	Moderators  []string                   `json:"moderators"`
	LoopBreaker *rooms.LoopBreakerSettings `json:"loop_breaker"`
}

// adminCreateObserverRoom is POST /_agentspace/admin/v1/rooms: the observer
// room #name, created if missing, with every agent joined and able to post.
// Idempotent: an existing room is completed, never duplicated.
func (a *API) adminCreateObserverRoom(w http.ResponseWriter, r *http.Request) error {
	s, err := a.requireAgentspaceAdmin(r)
	if err != nil {
		return err
	}
	var body observerRoomBody
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if err := rooms.ValidateObserverName(body.Name); err != nil {
		return err
	}
	creator := a.agentsSender()
	if creator == "" {
		creator = s.UserID // a human admin, when the built-in appservice is not loaded
	}
	agents := make([]string, 0, len(body.Agents))
	for _, ag := range body.Agents {
		userID, err := a.agentUserID(r, ag)
		if err != nil {
			return err
		}
		agents = append(agents, userID)
	}
	for _, list := range [][]string{body.Invite, body.Moderators} {
		for _, u := range list {
			if !validUserID(u) {
				return badParam("Invalid user ID %q", u)
			}
		}
	}
	if lb := body.LoopBreaker; lb != nil && (lb.MaxConsecutive < 0 || lb.MaxPerMinute < 0) {
		return badParam("loop_breaker limits must be 0 (no limit) or more")
	}
	moderators := append(append([]string{}, a.cfg.Agents.ObserverModerators...), body.Moderators...)
	roomID, created, err := a.rooms.EnsureObserverRoom(r.Context(), rooms.ObserverRoomRequest{
		Name: body.Name, DisplayName: body.DisplayName, Creator: creator, Agents: agents, Moderators: moderators,
		Topic: body.Topic, Private: body.Private, Invite: body.Invite, LoopBreaker: body.LoopBreaker,
	})
	if err != nil {
		return err
	}
	a.log.InfoContext(r.Context(), "observer room ready", "room_id", roomID, "created", created, "agents", len(agents))
	return writeJSON(w, http.StatusOK, map[string]any{
		"room_id": roomID, "alias": "#" + body.Name + ":" + a.cfg.ServerName, "created": created, "agents": agents,
	})
}

// agentUserID maps an agent reference to a local user that exists: a full
// user id, or an OpenClaw agent id in the built-in namespace (whose user is
// created when missing).
func (a *API) agentUserID(r *http.Request, ref string) (string, error) {
	if strings.HasPrefix(ref, "@") {
		if !validUserID(ref) || !strings.HasSuffix(ref, ":"+a.cfg.ServerName) {
			return "", badParam("%q is not a local user ID", ref)
		}
		if _, err := a.db.UserByID(r.Context(), ref); errors.Is(err, storage.ErrNotFound) {
			return "", mautrix.MNotFound.WithMessage("User %s does not exist", ref)
		} else if err != nil {
			return "", err
		}
		return ref, nil
	}
	if a.builtinAgents() == nil {
		return "", badParam("the built-in agents appservice is not loaded: name agents by their full user ID")
	}
	id := strings.ToLower(strings.TrimSpace(ref))
	localpart := a.cfg.Agents.UserPrefix + id
	if id == "" || validateLocalpart(localpart, a.cfg.ServerName) != nil {
		return "", badParam("%q is not a usable agent id (allowed: a-z 0-9 . _ = - / +)", ref)
	}
	userID := "@" + localpart + ":" + a.cfg.ServerName
	if err := a.ensureAgentUser(r.Context(), userID, localpart, id); err != nil {
		return "", err
	}
	return userID, nil
}

// adminTranscript is GET .../rooms/{roomId}/transcript?format=jsonl|markdown:
// every message with sender, display name, time, body, reply/thread/edit
// relations and redactions marked, streamed page by page.
func (a *API) adminTranscript(w http.ResponseWriter, r *http.Request) error {
	if _, err := a.requireAgentspaceAdmin(r); err != nil {
		return err
	}
	roomID, err := a.adminRoom(r)
	if err != nil {
		return err
	}
	format := r.URL.Query().Get("format")
	switch format {
	case "", "jsonl":
		format = "jsonl"
		w.Header().Set("Content-Type", "application/x-ndjson; charset=utf-8")
	case "markdown", "md":
		format = "markdown"
		w.Header().Set("Content-Type", "text/markdown; charset=utf-8")
	default:
		return badParam("format must be jsonl or markdown")
	}
	ctx := r.Context()
	bw := bufio.NewWriterSize(w, 32<<10)
	w.WriteHeader(http.StatusOK)
	if format == "markdown" {
		a.writeMarkdownHeader(r, bw, roomID)
	}
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	err = a.db.EachTranscriptEntry(ctx, roomID, func(te *storage.TranscriptEntry) error {
		if format == "jsonl" {
			return enc.Encode(te)
		}
		return writeMarkdownEntry(bw, te)
	})
	if err != nil {
		// The status is sent: end the stream with a visible marker instead.
		a.log.ErrorContext(ctx, "transcript stream failed", "room_id", roomID, "err", err)
		if format == "jsonl" {
			_ = enc.Encode(map[string]string{"error": "transcript incomplete: internal error"})
		} else {
			_, _ = io.WriteString(bw, "\n_Transcript incomplete: internal error._\n")
		}
	}
	_ = bw.Flush()
	return nil
}

// writeMarkdownHeader writes the transcript's title block.
func (a *API) writeMarkdownHeader(r *http.Request, w io.Writer, roomID string) {
	title := roomID
	if ev, err := a.rooms.CurrentStateEvent(r.Context(), roomID, "m.room.name", ""); err == nil && ev != nil {
		if n := gjson.GetBytes(ev.Content(), "name").Str; n != "" {
			title = n
		}
	}
	fmt.Fprintf(w, "# %s\n\nRoom `%s`", mdEscape(title), roomID)
	if aliases, err := a.db.AliasesOfRoom(r.Context(), roomID); err == nil && len(aliases) > 0 {
		fmt.Fprintf(w, " (`%s`)", aliases[0])
	}
	fmt.Fprintf(w, " · transcript exported %s\n\n---\n\n", time.Now().UTC().Format("2006-01-02 15:04:05 UTC"))
}

// writeMarkdownEntry renders one message: a heading with who and when, a
// line of ids and relations, and the body as a block quote.
func writeMarkdownEntry(w io.Writer, te *storage.TranscriptEntry) error {
	who := te.DisplayName
	if who == "" {
		who = te.Sender
	}
	when := time.UnixMilli(te.TS).UTC().Format("2006-01-02 15:04:05 UTC")
	var b strings.Builder
	fmt.Fprintf(&b, "### %s · %s\n\n`%s` · `%s`", mdEscape(who), when, te.Sender, te.EventID)
	if te.ReplyTo != "" {
		fmt.Fprintf(&b, " · reply to `%s`", te.ReplyTo)
	}
	if te.ThreadRoot != "" {
		fmt.Fprintf(&b, " · in thread `%s`", te.ThreadRoot)
	}
	if te.Replaces != "" {
		fmt.Fprintf(&b, " · edit of `%s`", te.Replaces)
	}
	if te.MsgType != "" && te.MsgType != "m.text" {
		fmt.Fprintf(&b, " · %s", te.MsgType)
	}
	b.WriteString("\n\n")
	switch {
	case te.Redacted:
		b.WriteString("> _(message deleted)_\n")
	case te.Encrypted:
		b.WriteString("> _(encrypted message)_\n")
	default:
		for _, line := range strings.Split(strings.TrimRight(te.Body, "\n"), "\n") {
			b.WriteString("> ")
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

// mdEscape keeps a name from being read as Markdown.
func mdEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, "*", `\*`, "_", `\_`, "`", "\\`", "#", `\#`, "[", `\[`, "]", `\]`, "\n", " ").Replace(s)
}

// adminRoomStats is GET .../rooms/{roomId}/stats: per sender message count,
// words, first and last time and median response time to the previous
// speaker, computed in one streaming pass.
func (a *API) adminRoomStats(w http.ResponseWriter, r *http.Request) error {
	if _, err := a.requireAgentspaceAdmin(r); err != nil {
		return err
	}
	roomID, err := a.adminRoom(r)
	if err != nil {
		return err
	}
	st := storage.NewRoomStats(roomID)
	if err := a.db.EachTranscriptEntry(r.Context(), roomID, func(te *storage.TranscriptEntry) error {
		st.Add(te)
		return nil
	}); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, st.Finish())
}

// adminLoopBreaker is GET/PUT .../rooms/{roomId}/loop_breaker. PUT takes
// any of enabled, max_consecutive and max_per_minute; the others keep
// their current values. The answer is the room's status.
func (a *API) adminLoopBreaker(w http.ResponseWriter, r *http.Request) error {
	if _, err := a.requireAgentspaceAdmin(r); err != nil {
		return err
	}
	roomID, err := a.adminRoom(r)
	if err != nil {
		return err
	}
	lb := a.agents.loopBreaker
	if r.Method == http.MethodPut {
		var body struct {
			Enabled        *bool `json:"enabled"`
			MaxConsecutive *int  `json:"max_consecutive"`
			MaxPerMinute   *int  `json:"max_per_minute"`
		}
		if err := decodeJSON(r, &body); err != nil {
			return err
		}
		cur, err := lb.Status(r.Context(), roomID)
		if err != nil {
			return err
		}
		st := cur.LoopBreakerSettings
		if body.Enabled != nil {
			st.Enabled = *body.Enabled
		}
		if body.MaxConsecutive != nil {
			st.MaxConsecutive = *body.MaxConsecutive
		}
		if body.MaxPerMinute != nil {
			st.MaxPerMinute = *body.MaxPerMinute
		}
		if err := lb.Set(r.Context(), roomID, st); err != nil {
			return err
		}
		a.log.InfoContext(r.Context(), "loop breaker changed", "room_id", roomID, "enabled", st.Enabled,
			"max_consecutive", st.MaxConsecutive, "max_per_minute", st.MaxPerMinute)
	}
	status, err := lb.Status(r.Context(), roomID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, status)
}

// adminLoopBreakerReset is POST .../rooms/{roomId}/loop_breaker/reset: a
// fresh budget, and the bots may talk again.
func (a *API) adminLoopBreakerReset(w http.ResponseWriter, r *http.Request) error {
	if _, err := a.requireAgentspaceAdmin(r); err != nil {
		return err
	}
	roomID, err := a.adminRoom(r)
	if err != nil {
		return err
	}
	if err := a.agents.loopBreaker.Reset(r.Context(), roomID); err != nil {
		return err
	}
	status, err := a.agents.loopBreaker.Status(r.Context(), roomID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, status)
}
