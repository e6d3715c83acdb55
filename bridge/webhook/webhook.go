// Package webhook forwards room events to HTTP endpoints: Slack and Discord
// incoming webhooks, a generic signed JSON envelope, and the hooks
// (onMessageReceived, onRoomCreated, onRoomDeleted) of the original design.
//
// Every webhook and hook is an internal consumer of the event stream, run by
// the same worker as application services (appservice.Worker): a durable
// cursor in appservice_state keyed "webhook:<name>" or "hook:<name>", each
// request's range stored before it is sent, retried with exponential
// backoff until the receiver answers 2xx, in stream order, one event per
// request (so a delivered event is never sent again). A receiver that is down
// delays nobody else, and clients never wait for any of it.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidwall/gjson"

	"github.com/agentspace/agentspace/appservice"
	"github.com/agentspace/agentspace/bridge"
	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// Target kinds beyond the webhook kinds of package config.
const kindHook = "hook"

// target is one webhook or hook.
type target struct {
	id     string // cursor key: "webhook:<name>" or "hook:<name>"
	name   string
	kind   string // slack, discord, http or hook
	on     string // the hook's event (hooks only)
	url    string // secret: never logged
	secret string
	// roomIDs and aliases are the configured rooms (both empty: every room).
	roomIDs map[string]bool
	aliases map[string]bool
	rooms   []string
	worker  *appservice.Worker
}

// Runner runs every configured webhook and hook.
type Runner struct {
	db      *storage.DB
	rooms   *rooms.Service
	log     *slog.Logger
	client  *http.Client
	targets []*target
	metrics *metrics
}

// New prepares the webhooks and hooks of cfg (Run starts them). reg
// receives the metrics (nil: none).
func New(db *storage.DB, rs *rooms.Service, log *slog.Logger, reg prometheus.Registerer, cfg *config.Config, dcfg appservice.DeliveryConfig) *Runner {
	r := &Runner{
		db: db, rooms: rs, log: log,
		client: &http.Client{
			Timeout: dcfg.RequestTimeout,
			// A redirect is an answer, not a delivery: following it would
			// send the signed body somewhere nobody configured.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		metrics: newMetrics(reg),
	}
	for _, w := range cfg.Bridges.Webhooks {
		r.add(&target{id: "webhook:" + w.Name, name: w.Name, kind: w.Kind, url: w.URL, secret: w.Secret, rooms: w.Rooms}, dcfg)
	}
	for _, h := range cfg.Hooks {
		r.add(&target{id: "hook:" + h.Name, name: h.Name, kind: kindHook, on: h.On, url: h.URL, secret: h.Secret, rooms: h.Rooms}, dcfg)
	}
	return r
}

func (r *Runner) add(t *target, dcfg appservice.DeliveryConfig) {
	t.roomIDs, t.aliases = map[string]bool{}, map[string]bool{}
	for _, ref := range t.rooms {
		if strings.HasPrefix(ref, "#") {
			t.aliases[ref] = true
		} else {
			t.roomIDs[ref] = true
		}
	}
	c := appservice.Consumer{
		ID:  t.id,
		Log: r.log.With("bridge", t.id, "target", config.RedactURL(t.url)),
		Interested: func(ctx context.Context, e *storage.Event, cache map[string]bool) bool {
			return r.interested(ctx, t, e, cache)
		},
		Deliver:   func(ctx context.Context, txnID int64, evs []*storage.Event) error { return r.deliver(ctx, t, evs) },
		MaxEvents: 1,
		Delivered: func(evs []*storage.Event) {
			now := time.Now().UnixMilli()
			for _, e := range evs {
				r.metrics.lag.WithLabelValues(t.id).Observe(float64(max(now-e.OriginTS, 0)) / 1000)
			}
			r.metrics.deliveries.WithLabelValues(t.id).Add(float64(len(evs)))
		},
		Failed: func(error) { r.metrics.failures.WithLabelValues(t.id).Inc() },
	}
	if t.on == config.HookRoomDeleted {
		c.Read = r.db.StreamAfter // deletions purge the room: they are recorded beside the events
	}
	t.worker = appservice.NewWorker(r.db, r.rooms, dcfg, c)
	r.targets = append(r.targets, t)
}

// Prepare gives every webhook and hook its cursor before the server serves
// (see appservice.Worker.Prepare).
func (r *Runner) Prepare(ctx context.Context) error {
	for _, t := range r.targets {
		if err := t.worker.Prepare(ctx); err != nil {
			return fmt.Errorf("%s: %w", t.id, err)
		}
	}
	return nil
}

// Run delivers until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, t := range r.targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.worker.Run(ctx)
		}()
	}
	wg.Wait()
}

// eventType is the stream entry type a target forwards.
func (t *target) eventType() string {
	switch t.on {
	case config.HookRoomCreated:
		return "m.room.create"
	case config.HookRoomDeleted:
		return storage.RoomDeletedType
	}
	return "m.room.message"
}

func (r *Runner) interested(ctx context.Context, t *target, e *storage.Event, cache map[string]bool) bool {
	if e.Type != t.eventType() {
		return false
	}
	switch e.Type {
	case "m.room.message":
		if _, ok := bridge.MessageOf(e); !ok {
			return false
		}
	case "m.room.create":
		if e.StateKey == nil || *e.StateKey != "" {
			return false
		}
	}
	return r.inRooms(ctx, t, e.RoomID, cache)
}

// inRooms reports whether roomID is one of the target's rooms: by id, or
// by one of its aliases now (so an alias created or moved later counts).
func (r *Runner) inRooms(ctx context.Context, t *target, roomID string, cache map[string]bool) bool {
	if len(t.roomIDs) == 0 && len(t.aliases) == 0 {
		return true
	}
	if t.roomIDs[roomID] {
		return true
	}
	if len(t.aliases) == 0 {
		return false
	}
	if v, ok := cache[roomID]; ok {
		return v
	}
	aliases, err := r.db.AliasesOfRoom(ctx, roomID)
	if err != nil {
		r.log.WarnContext(ctx, "reading room aliases for a webhook", "bridge", t.id, "room_id", roomID, "err", err)
	}
	v := false
	for _, a := range aliases {
		if t.aliases[a] {
			v = true
			break
		}
	}
	cache[roomID] = v
	return v
}

// deliver POSTs each event (there is one: MaxEvents is 1) in order.
func (r *Runner) deliver(ctx context.Context, t *target, evs []*storage.Event) error {
	for _, e := range evs {
		body, err := r.payload(ctx, t, e)
		if err != nil {
			return err
		}
		if err := r.post(ctx, t, body); err != nil {
			return err
		}
	}
	return nil
}

// Payload formats.
type (
	slackPayload struct {
		Text string `json:"text"`
	}
	discordPayload struct {
		Content         string          `json:"content"`
		Username        string          `json:"username"`
		AllowedMentions allowedMentions `json:"allowed_mentions"`
	}
	allowedMentions struct {
		Parse []string `json:"parse"`
	}
	// Envelope is the body of kind http webhooks.
	Envelope struct {
		Room       string `json:"room"`
		Sender     string `json:"sender"`
		SenderName string `json:"sender_name"`
		TS         int64  `json:"ts"`
		Body       string `json:"body"`
		EventID    string `json:"event_id"`
	}
	// HookMessage is the body of onMessageReceived hooks.
	HookMessage struct {
		Hook       string `json:"hook"`
		Room       string `json:"room"`
		Sender     string `json:"sender"`
		SenderName string `json:"sender_name"`
		TS         int64  `json:"ts"`
		Body       string `json:"body"`
		MsgType    string `json:"msgtype"`
		EventID    string `json:"event_id"`
	}
	// HookRoomCreated is the body of onRoomCreated hooks.
	HookRoomCreated struct {
		Hook        string `json:"hook"`
		Room        string `json:"room"`
		Creator     string `json:"creator"`
		TS          int64  `json:"ts"`
		RoomVersion string `json:"room_version"`
		EventID     string `json:"event_id"`
	}
	// HookRoomDeleted is the body of onRoomDeleted hooks.
	HookRoomDeleted struct {
		Hook      string `json:"hook"`
		Room      string `json:"room"`
		DeletedBy string `json:"deleted_by"`
		TS        int64  `json:"ts"`
	}
)

// Discord's limits on a webhook message.
const (
	discordMaxContent  = 2000
	discordMaxUsername = 80
)

// payload renders one event for the target.
func (r *Runner) payload(ctx context.Context, t *target, e *storage.Event) ([]byte, error) {
	var v any
	switch {
	case t.kind == kindHook && t.on == config.HookRoomCreated:
		v = HookRoomCreated{Hook: t.on, Room: e.RoomID, Creator: e.Sender, TS: e.OriginTS, EventID: e.EventID,
			RoomVersion: roomVersionOf(e)}
	case t.kind == kindHook && t.on == config.HookRoomDeleted:
		v = HookRoomDeleted{Hook: t.on, Room: e.RoomID, DeletedBy: e.Sender, TS: e.OriginTS}
	default:
		m, _ := bridge.MessageOf(e)
		name := bridge.DisplayName(ctx, r.rooms, e.RoomID, e.Sender)
		switch t.kind {
		case config.WebhookSlack:
			v = slackPayload{Text: slackEscape(name) + ": " + slackEscape(m.Body)}
		case config.WebhookDiscord:
			v = discordPayload{Content: truncate(m.Body, discordMaxContent), Username: truncate(name, discordMaxUsername),
				AllowedMentions: allowedMentions{Parse: []string{}}}
		case config.WebhookHTTP:
			v = Envelope{Room: e.RoomID, Sender: e.Sender, SenderName: name, TS: e.OriginTS, Body: m.Body, EventID: e.EventID}
		default: // onMessageReceived
			v = HookMessage{Hook: t.on, Room: e.RoomID, Sender: e.Sender, SenderName: name, TS: e.OriginTS,
				Body: m.Body, MsgType: m.MsgType, EventID: e.EventID}
		}
	}
	// Not HTML-escaped: receivers get the text as written ("<" rather than
	// "\u003c"; Slack's own escaping above is what Slack asks for).
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func roomVersionOf(e *storage.Event) string {
	if v := gjson.GetBytes(e.PDUJSON, "content.room_version"); v.Type == gjson.String {
		return v.Str
	}
	return "1" // the spec's default when m.room.create has none
}

// slackEscape escapes the three characters Slack's message format reserves
// (https://api.slack.com/reference/surfaces/formatting#escaping).
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// truncate cuts s to at most n characters (runes), marking the cut with "…".
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	rs := []rune(s)
	return string(rs[:n-1]) + "…"
}

// post sends one body; only a 2xx answer counts. Errors never contain the
// URL (it is a secret): only its scheme and host.
func (r *Runner) post(ctx context.Context, t *target, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building request to %s: invalid URL", config.RedactURL(t.url))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "AgentSpace")
	if t.secret != "" {
		req.Header.Set(bridge.SignatureHeader, bridge.Sign(t.secret, body))
	}
	if t.kind == kindHook {
		req.Header.Set("X-AgentSpace-Hook", t.on)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // url.Error quotes the whole URL
		}
		return fmt.Errorf("POST %s: %w", config.RedactURL(t.url), err)
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // let the connection be reused
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		return nil
	}
	err = fmt.Errorf("POST %s: HTTP %d: %.200s", config.RedactURL(t.url), resp.StatusCode, strings.TrimSpace(string(snippet)))
	if resp.StatusCode == http.StatusTooManyRequests {
		if secs, perr := strconv.ParseFloat(resp.Header.Get("Retry-After"), 64); perr == nil && secs > 0 {
			return &appservice.RetryAfterError{Err: err, After: time.Duration(secs * float64(time.Second))}
		}
	}
	return err
}

// Status is what `agentspace bridges status` shows of one webhook or hook.
type Status struct {
	Name string `json:"name"`
	// Type is "webhook" or "hook".
	Type string `json:"type"`
	// Kind is slack, discord or http for webhooks, the event for hooks.
	Kind string `json:"kind"`
	// Target is the URL's scheme and host (the rest is secret).
	Target       string   `json:"target"`
	Rooms        []string `json:"rooms"`
	DeliveredPos int64    `json:"delivered_stream_position"`
	PendingTxnID *int64   `json:"pending_txn_id"`
	// Backlog counts the events of the webhook's kind and rooms not yet
	// delivered; LagMS is the age of the oldest of them (0: none).
	Backlog       int64  `json:"backlog"`
	LagMS         int64  `json:"lag_ms"`
	LastSuccessTS int64  `json:"last_success_ts"`
	LastError     string `json:"last_error"`
	LastErrorTS   int64  `json:"last_error_ts"`
	Failures      int64  `json:"consecutive_failures"`
}

// Statuses reports every webhook and hook, in configuration order.
func (r *Runner) Statuses(ctx context.Context) ([]Status, error) {
	out := make([]Status, 0, len(r.targets))
	for _, t := range r.targets {
		st, err := r.db.AppserviceState(ctx, t.id, r.rooms.Notifier().Latest())
		if err != nil {
			return nil, err
		}
		f := storage.BacklogFilter{Types: []string{t.eventType()}}
		if len(t.rooms) > 0 {
			f.RoomIDs = []string{}
			for id := range t.roomIDs {
				f.RoomIDs = append(f.RoomIDs, id)
			}
			for a := range t.aliases {
				if al, err := r.db.AliasByName(ctx, a); err == nil {
					f.RoomIDs = append(f.RoomIDs, al.RoomID)
				}
			}
		}
		n, oldest, err := r.db.BridgeBacklog(ctx, st.DeliveredPos, f)
		if err != nil {
			return nil, err
		}
		s := Status{
			Name: t.name, Type: "webhook", Kind: t.kind, Target: config.RedactURL(t.url), Rooms: t.rooms,
			DeliveredPos: int64(st.DeliveredPos), PendingTxnID: st.PendingTxnID, Backlog: n,
			LastSuccessTS: st.LastSuccessTS, LastError: st.LastError, LastErrorTS: st.LastErrorTS, Failures: st.Failures,
		}
		if t.kind == kindHook {
			s.Type, s.Kind = "hook", t.on
		}
		if s.Rooms == nil {
			s.Rooms = []string{}
		}
		if oldest > 0 {
			s.LagMS = max(time.Now().UnixMilli()-oldest, 0)
		}
		out = append(out, s)
	}
	return out, nil
}

type metrics struct {
	deliveries *prometheus.CounterVec
	failures   *prometheus.CounterVec
	lag        *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentspace_bridge_deliveries_total", Help: "Events delivered (2xx) per webhook or hook.",
		}, []string{"bridge"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentspace_bridge_failures_total", Help: "Failed delivery attempts per webhook or hook.",
		}, []string{"bridge"}),
		lag: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "agentspace_bridge_delivery_lag_seconds", Help: "Time from an event's origin_server_ts to its delivery by a webhook or hook.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30, 300},
		}, []string{"bridge"}),
	}
	if reg != nil {
		reg.MustRegister(m.deliveries, m.failures, m.lag)
	}
	return m
}
