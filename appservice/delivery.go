package appservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// DeliveryConfig tunes transaction delivery.
type DeliveryConfig struct {
	// MaxEventsPerTxn caps the room events in one transaction.
	MaxEventsPerTxn int
	// ScanLimit is how many stream events are read per step.
	ScanLimit int
	// MinBackoff and MaxBackoff bound the exponential retry delay.
	MinBackoff, MaxBackoff time.Duration
	// RequestTimeout bounds each call to an appservice.
	RequestTimeout time.Duration
	// MaxQueuedEphemeral bounds the in-memory ephemeral/to-device queue per
	// appservice (the oldest are dropped beyond it: they are ephemeral).
	MaxQueuedEphemeral int
}

// DefaultDeliveryConfig is what the server uses.
func DefaultDeliveryConfig() DeliveryConfig {
	return DeliveryConfig{
		MaxEventsPerTxn:    100,
		ScanLimit:          1000,
		MinBackoff:         time.Second,
		MaxBackoff:         5 * time.Minute,
		RequestTimeout:     30 * time.Second,
		MaxQueuedEphemeral: 1000,
	}
}

// Deliverer pushes events to every registered appservice. Each appservice
// has its own worker: one that is slow or down never delays another, and
// clients are never delayed at all (workers only read the stream).
type Deliverer struct {
	db         *storage.DB
	rooms      *rooms.Service
	registry   *Registry
	serverName string
	log        *slog.Logger
	client     *http.Client
	cfg        DeliveryConfig
	metrics    *metrics
	workers    map[string]*asWorker
}

// NewDeliverer builds the delivery workers (Run starts them). reg receives
// the per-appservice metrics (nil: none).
func NewDeliverer(db *storage.DB, rs *rooms.Service, registry *Registry, log *slog.Logger, reg prometheus.Registerer, cfg DeliveryConfig) *Deliverer {
	d := &Deliverer{
		db: db, rooms: rs, registry: registry, serverName: rs.ServerName(), log: log, cfg: cfg,
		client:  &http.Client{Timeout: cfg.RequestTimeout},
		workers: make(map[string]*asWorker),
	}
	d.metrics = newMetrics(d, reg)
	for _, r := range registry.list {
		w := &asWorker{d: d, reg: r}
		w.stream = NewWorker(db, rs, cfg, Consumer{
			ID:         r.ID,
			Log:        log.With("appservice", r.ID),
			Interested: w.interestedInEvent,
			Deliver:    w.deliver,
			Disabled:   r.URL == "", // an appservice without a URL receives nothing; its cursor still moves
			Side:       w,
			Delivered: func(evs []*storage.Event) {
				now := time.Now().UnixMilli()
				for _, e := range evs {
					d.metrics.lag.WithLabelValues(r.ID).Observe(float64(max(now-e.OriginTS, 0)) / 1000)
				}
				d.metrics.transactions.WithLabelValues(r.ID).Inc()
				d.metrics.events.WithLabelValues(r.ID).Add(float64(len(evs)))
			},
			Failed: func(error) { d.metrics.failures.WithLabelValues(r.ID).Inc() },
		})
		d.workers[r.ID] = w
	}
	return d
}

// Registry is the set of registrations being served.
func (d *Deliverer) Registry() *Registry { return d.registry }

// Run delivers until ctx ends.
func (d *Deliverer) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, w := range d.workers {
		if w.reg.URL == "" {
			// Nothing is ever sent to it (the built-in agents appservice):
			// following the stream would only cost a read and a write per commit.
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.stream.Run(ctx)
		}()
	}
	wg.Wait()
}

// Consumer is one internal consumer of the event stream. A Worker feeds it
// the events it selects, in stream order, in transactions whose id and range
// are stored before they are sent, retrying each with backoff until Deliver
// succeeds: appservices are consumers, and so are the webhook and hook
// bridges (package bridge/webhook).
type Consumer struct {
	// ID keys the durable cursor in the appservice_state table: an
	// appservice's id, or e.g. "webhook:<name>" for other consumers.
	ID string
	// Log receives the consumer's delivery failures (with its attributes).
	Log *slog.Logger
	// Interested selects the events to deliver. cache lives for one scan
	// of the stream (for per-room answers).
	Interested func(ctx context.Context, e *storage.Event, cache map[string]bool) bool
	// Deliver sends one transaction; only a nil error counts as delivered.
	// A retry of the same transaction has the same txnID and events.
	Deliver func(ctx context.Context, txnID int64, evs []*storage.Event) error
	// MaxEvents caps the events per transaction (0: DeliveryConfig.MaxEventsPerTxn).
	// With 1, each event is sent on its own and never sent twice after a
	// success.
	MaxEvents int
	// Read reads the stream: up to limit entries with after < pos <= upTo
	// (upTo 0: no bound), in order. Nil means the events table
	// (storage.DB.EventsAfter).
	Read func(ctx context.Context, after, upTo storage.StreamPos, limit int) ([]*storage.Event, error)
	// Disabled consumers are sent nothing; their cursor still moves.
	Disabled bool
	// Side carries data from outside the stream with the transactions (an
	// appservice's ephemeral events); nil for none.
	Side Sideband
	// Delivered and Failed, when set, are told of each outcome (metrics).
	Delivered func(evs []*storage.Event)
	Failed    func(err error)
}

// Sideband is data a Consumer's transactions carry besides stream events.
type Sideband interface {
	// Take moves what is queued into the next transaction, unless the last
	// one's items are still carried, and reports how many items it carries.
	Take() int
	// Carried reports how many items the pending transaction carries.
	Carried() int
	// Done forgets the items of a transaction that was delivered or dropped.
	Done()
}

// RetryAfterError is a failed delivery whose receiver asked to be called
// again no sooner than After (HTTP 429 with Retry-After): the worker waits
// at least that long.
type RetryAfterError struct {
	Err   error
	After time.Duration
}

func (e *RetryAfterError) Error() string { return e.Err.Error() }
func (e *RetryAfterError) Unwrap() error { return e.Err }

// Worker delivers the stream to one Consumer: the events table is the
// queue, a durable cursor per consumer is the only state. A slow or failing
// consumer delays nobody else: workers only read the stream.
type Worker struct {
	db    *storage.DB
	rooms *rooms.Service
	cfg   DeliveryConfig
	c     Consumer
	wake  chan struct{}
}

// NewWorker prepares a worker for c (Run starts it).
func NewWorker(db *storage.DB, rs *rooms.Service, cfg DeliveryConfig, c Consumer) *Worker {
	if c.MaxEvents <= 0 {
		c.MaxEvents = cfg.MaxEventsPerTxn
	}
	if c.Read == nil {
		c.Read = db.EventsAfter
	}
	if c.Side == nil {
		c.Side = noSideband{}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return &Worker{db: db, rooms: rs, cfg: cfg, c: c, wake: make(chan struct{}, 1)}
}

// ID is the consumer's id.
func (w *Worker) ID() string { return w.c.ID }

// Prepare gives a new consumer its cursor at the current stream position.
// The server calls it before serving: a worker may wait for its delivery
// lease (several instances), and an event committed meanwhile must still
// be after the cursor, not before it.
func (w *Worker) Prepare(ctx context.Context) error {
	_, err := w.db.AppserviceState(ctx, w.c.ID, w.rooms.Notifier().Latest())
	return err
}

// Prepare gives every appservice that receives transactions its cursor
// (see Worker.Prepare).
func (d *Deliverer) Prepare(ctx context.Context) error {
	for _, w := range d.workers {
		if w.reg.URL == "" {
			continue
		}
		if err := w.stream.Prepare(ctx); err != nil {
			return fmt.Errorf("appservice %s: %w", w.reg.ID, err)
		}
	}
	return nil
}

// Wake makes the worker look for work now (for sideband data; stream
// commits wake it by themselves).
func (w *Worker) Wake() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

type noSideband struct{}

func (noSideband) Take() int    { return 0 }
func (noSideband) Carried() int { return 0 }
func (noSideband) Done()        {}

// Run delivers until ctx ends. Of several instances sharing a PostgreSQL
// database, only the one holding the consumer's lease delivers; when it
// dies its lease ends with its database session and another takes over
// from the durable cursor.
func (w *Worker) Run(ctx context.Context) {
	for ctx.Err() == nil {
		lease, err := w.db.AcquireLease(ctx, "consumer:"+w.c.ID)
		if err != nil {
			return // ctx ended
		}
		lctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-lease.Lost():
				w.c.Log.Warn("delivery lease lost; waiting to take it again")
				cancel()
			case <-lctx.Done():
			}
		}()
		w.run(lctx)
		cancel()
		lease.Release()
	}
}

// run delivers while this instance holds the lease (until ctx ends).
func (w *Worker) run(ctx context.Context) {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = w.cfg.MinBackoff
	b.MaxInterval = w.cfg.MaxBackoff
	b.MaxElapsedTime = 0 // retry for ever: nothing is dropped
	b.Reset()
	var st *storage.AppserviceState
	for ctx.Err() == nil {
		var err error
		if st == nil {
			st, err = w.db.AppserviceState(ctx, w.c.ID, w.rooms.Notifier().Latest())
		}
		var progressed bool
		var woken <-chan struct{}
		if err == nil {
			// Take the channel before reading so a commit in between still wakes us.
			woken = w.rooms.Notifier().ListenAny(st.DeliveredPos)
			progressed, err = w.step(ctx, st)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if w.c.Failed != nil {
				w.c.Failed(err)
			}
			if dbErr := w.db.RecordAppserviceFailure(ctx, w.c.ID, err.Error()); dbErr != nil && ctx.Err() == nil {
				w.c.Log.Error("recording delivery failure", "err", dbErr)
			}
			wait := b.NextBackOff()
			var ra *RetryAfterError
			if errors.As(err, &ra) && ra.After > wait {
				wait = min(ra.After, max(w.cfg.MaxBackoff, time.Minute))
			}
			w.c.Log.Warn("delivery failed; will retry", "err", err, "retry_in", wait.String())
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			continue
		}
		b.Reset()
		if progressed {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-woken:
		case <-w.wake:
		}
	}
}

// step sends at most one transaction. progressed is true when the cursor
// moved (so there may be more to do at once).
func (w *Worker) step(ctx context.Context, st *storage.AppserviceState) (progressed bool, err error) {
	var evs []*storage.Event
	var endPos storage.StreamPos
	var txnID int64
	if st.PendingTxnID != nil {
		// Retry the transaction in flight: same id, same range of the stream.
		txnID, endPos = *st.PendingTxnID, *st.PendingEndPos
		scanned, err := w.c.Read(ctx, st.DeliveredPos, endPos, w.cfg.ScanLimit)
		if err != nil {
			return false, fmt.Errorf("reading events: %w", err)
		}
		evs, _ = w.interesting(ctx, scanned, len(scanned))
		if len(evs) == 0 && w.c.Side.Carried() == 0 {
			// Nothing left to say (e.g. the ephemeral part was lost in a
			// restart, or the room was purged): settle the transaction
			// without sending it.
			if err := w.db.AdvanceAppservice(ctx, w.c.ID, endPos, false); err != nil {
				return false, err
			}
			st.DeliveredPos, st.PendingTxnID, st.PendingEndPos = endPos, nil, nil
			return true, nil
		}
	} else {
		scanned, err := w.c.Read(ctx, st.DeliveredPos, 0, w.cfg.ScanLimit)
		if err != nil {
			return false, fmt.Errorf("reading events: %w", err)
		}
		var upTo int
		evs, upTo = w.interesting(ctx, scanned, w.c.MaxEvents)
		endPos = st.DeliveredPos
		if upTo > 0 {
			endPos = scanned[upTo-1].Pos
		}
		side := w.c.Side.Take()
		if len(evs) == 0 && side == 0 {
			if endPos == st.DeliveredPos {
				return false, nil
			}
			if err := w.db.AdvanceAppservice(ctx, w.c.ID, endPos, false); err != nil {
				return false, err
			}
			st.DeliveredPos = endPos
			return true, nil
		}
		if w.c.Disabled {
			w.c.Side.Done()
			if err := w.db.AdvanceAppservice(ctx, w.c.ID, endPos, false); err != nil {
				return false, err
			}
			st.DeliveredPos = endPos
			return true, nil
		}
		if txnID, err = w.db.BeginAppserviceTxn(ctx, w.c.ID, endPos); err != nil {
			return false, err
		}
		st.PendingTxnID, st.PendingEndPos = &txnID, &endPos
	}

	if err := w.c.Deliver(ctx, txnID, evs); err != nil {
		return false, err
	}
	if err := w.db.AdvanceAppservice(ctx, w.c.ID, endPos, true); err != nil {
		return false, err
	}
	if w.c.Delivered != nil {
		w.c.Delivered(evs)
	}
	w.c.Side.Done()
	st.DeliveredPos, st.PendingTxnID, st.PendingEndPos = endPos, nil, nil
	return true, nil
}

// interesting keeps the events the consumer is interested in, at most
// limit of them; upTo is how many of scanned that covers (the transaction
// ends at scanned[upTo-1]).
func (w *Worker) interesting(ctx context.Context, scanned []*storage.Event, limit int) (out []*storage.Event, upTo int) {
	roomCache := make(map[string]bool)
	for i, e := range scanned {
		if len(out) == limit {
			return out, i
		}
		if w.c.Interested(ctx, e, roomCache) {
			out = append(out, e)
		}
	}
	return out, len(scanned)
}

// asWorker delivers to one appservice: a stream Worker plus the in-memory
// queue of ephemeral events its transactions carry.
type asWorker struct {
	d      *Deliverer
	reg    *Registration
	stream *Worker

	mu       sync.Mutex
	queued   []ephemeral // waiting for the next transaction
	inflight []ephemeral // carried by the pending transaction (resent on retry)
}

type ephemeral struct {
	toDevice bool
	event    json.RawMessage
}

// Take implements Sideband.
func (w *asWorker) Take() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.inflight) == 0 {
		w.inflight, w.queued = w.queued, nil
	}
	return len(w.inflight)
}

// Carried implements Sideband.
func (w *asWorker) Carried() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.inflight)
}

// Done implements Sideband.
func (w *asWorker) Done() {
	w.mu.Lock()
	w.inflight = nil
	w.mu.Unlock()
}

// interestedInEvent applies the spec's rules: the sender or (for member
// events) the state key is in a user namespace, or the room is of interest.
func (w *asWorker) interestedInEvent(ctx context.Context, e *storage.Event, roomCache map[string]bool) bool {
	if w.interestedInUser(e.Sender) {
		return true
	}
	if e.Type == "m.room.member" && e.StateKey != nil && w.interestedInUser(*e.StateKey) {
		return true
	}
	return w.interestedInRoom(ctx, e.RoomID, roomCache)
}

func (w *asWorker) interestedInUser(userID string) bool {
	return userID == w.reg.SenderID(w.d.serverName) || w.reg.IsInterestedInUser(userID)
}

// interestedInRoom: the room id or one of its aliases is in a namespace, or
// one of the appservice's users is joined to it.
func (w *asWorker) interestedInRoom(ctx context.Context, roomID string, cache map[string]bool) bool {
	if v, ok := cache[roomID]; ok {
		return v
	}
	v := w.reg.IsInterestedInRoomID(roomID)
	if !v {
		for _, m := range w.d.rooms.Notifier().JoinedMembers(roomID) {
			if w.interestedInUser(m) {
				v = true
				break
			}
		}
	}
	if !v && w.reg.HasAliasNamespaces() {
		aliases, err := w.d.db.AliasesOfRoom(ctx, roomID)
		if err != nil {
			w.d.log.WarnContext(ctx, "reading room aliases for appservice interest", "room_id", roomID, "err", err)
		}
		for _, a := range aliases {
			if w.reg.IsInterestedInAlias(a) {
				v = true
				break
			}
		}
	}
	if cache != nil {
		cache[roomID] = v
	}
	return v
}

// deliver renders and sends one transaction.
func (w *asWorker) deliver(ctx context.Context, txnID int64, evs []*storage.Event) error {
	return w.send(ctx, txnID, w.transactionBody(evs))
}

// transactionBody renders a transaction: room events in client format, and
// ephemeral/to-device events under both the stable and MSC2409 names.
func (w *asWorker) transactionBody(evs []*storage.Event) []byte {
	viewer := rooms.Viewer{UserID: w.reg.SenderID(w.d.serverName)}
	body := map[string]any{"events": rooms.ToClientEvents(evs, viewer, rooms.FormatOptions{})}
	w.mu.Lock()
	var eph, toDevice []json.RawMessage
	for _, e := range w.inflight {
		if e.toDevice {
			toDevice = append(toDevice, e.event)
		} else {
			eph = append(eph, e.event)
		}
	}
	w.mu.Unlock()
	if len(eph) > 0 {
		body["ephemeral"] = eph
		body["de.sorunome.msc2409.ephemeral"] = eph
	}
	if len(toDevice) > 0 {
		body["to_device"] = toDevice
		body["de.sorunome.msc2409.to_device"] = toDevice
	}
	return mustMarshal(body)
}

// send PUTs one transaction; only a 2xx answer counts as delivered.
func (w *asWorker) send(ctx context.Context, txnID int64, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, w.d.cfg.RequestTimeout)
	defer cancel()
	status, respBody, err := callAS(ctx, w.d.client, w.reg, http.MethodPut,
		"/_matrix/app/v1/transactions/"+strconv.FormatInt(txnID, 10), body)
	if err != nil {
		return fmt.Errorf("transaction %d: %w", txnID, err)
	}
	if status < 200 || status > 299 {
		return fmt.Errorf("transaction %d: appservice answered HTTP %d: %.200s", txnID, status, respBody)
	}
	return nil
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshalling %T: %v", v, err)) // only plain maps and raw JSON are marshalled
	}
	return b
}

// PushEphemeral queues an ephemeral event (m.typing, m.receipt, m.presence)
// for the appservices that asked for them and are interested: in the room
// (roomID) or in the user (userID, for presence).
func (d *Deliverer) PushEphemeral(ctx context.Context, roomID, userID string, event json.RawMessage) {
	for _, w := range d.workers {
		if !w.reg.ReceivesEphemeral() || w.reg.URL == "" {
			continue
		}
		interested := false
		if roomID != "" {
			interested = w.interestedInRoom(ctx, roomID, nil)
		} else if userID != "" {
			interested = w.interestedInUser(userID)
			for _, r := range d.rooms.Notifier().JoinedRooms(userID) {
				if interested {
					break
				}
				interested = w.interestedInRoom(ctx, r, nil)
			}
		}
		if interested {
			w.enqueue(ephemeral{event: event})
		}
	}
}

// PushToDevice queues a to-device message for the appservice whose
// namespace holds the recipient (MSC2409: the event carries to_user_id and
// to_device_id).
func (d *Deliverer) PushToDevice(toUserID, toDeviceID, sender, eventType string, content json.RawMessage) {
	for _, w := range d.workers {
		if !w.reg.ReceivesEphemeral() || w.reg.URL == "" || !w.interestedInUser(toUserID) {
			continue
		}
		ev := mustMarshal(map[string]any{
			"type": eventType, "sender": sender, "content": content,
			"to_user_id": toUserID, "to_device_id": toDeviceID,
		})
		w.enqueue(ephemeral{toDevice: true, event: ev})
	}
}

func (w *asWorker) enqueue(e ephemeral) {
	w.mu.Lock()
	if len(w.queued) >= w.d.cfg.MaxQueuedEphemeral {
		w.queued = w.queued[1:]
	}
	w.queued = append(w.queued, e)
	w.mu.Unlock()
	w.stream.Wake()
}

// Status is what an admin sees of one appservice's delivery.
type Status struct {
	ID            string `json:"id"`
	URL           string `json:"url"`
	Sender        string `json:"sender"`
	DeliveredPos  int64  `json:"delivered_stream_position"`
	PendingTxnID  *int64 `json:"pending_txn_id"`
	Backlog       int64  `json:"backlog_events"`
	OldestAgeMS   int64  `json:"oldest_undelivered_age_ms"`
	LastSuccessTS int64  `json:"last_success_ts"`
	LastError     string `json:"last_error"`
	LastErrorTS   int64  `json:"last_error_ts"`
	Failures      int64  `json:"consecutive_failures"`
}

// Statuses reports every appservice's delivery state.
func (d *Deliverer) Statuses(ctx context.Context) ([]Status, error) {
	out := make([]Status, 0, len(d.registry.list))
	for _, reg := range d.registry.list {
		st, err := d.db.AppserviceState(ctx, reg.ID, d.rooms.Notifier().Latest())
		if err != nil {
			return nil, err
		}
		n, oldest, err := d.db.EventBacklog(ctx, st.DeliveredPos)
		if err != nil {
			return nil, err
		}
		s := Status{
			ID: reg.ID, URL: reg.URL, Sender: reg.SenderID(d.serverName), DeliveredPos: int64(st.DeliveredPos),
			PendingTxnID: st.PendingTxnID, Backlog: n, LastSuccessTS: st.LastSuccessTS,
			LastError: st.LastError, LastErrorTS: st.LastErrorTS, Failures: st.Failures,
		}
		if oldest > 0 {
			s.OldestAgeMS = max(time.Now().UnixMilli()-oldest, 0)
		}
		out = append(out, s)
	}
	return out, nil
}
