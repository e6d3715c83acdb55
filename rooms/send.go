package rooms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// EventRequest is one event a local user wants to put in a room.
type EventRequest struct {
	Sender   string
	Type     string
	StateKey *string
	Content  json.RawMessage
	// Redacts is the target of an m.room.redaction.
	Redacts string
	// TxnID and DeviceID make the send idempotent per device.
	TxnID    string
	DeviceID string
}

// RedactsInContent reports whether a room version carries a redaction's
// target in content.redacts (v11 and later) rather than a top-level key.
func RedactsInContent(v gomatrixserverlib.RoomVersion) bool {
	n, err := strconv.Atoi(string(v))
	return err != nil || n >= 11
}

// StrPtr returns a pointer to s (for state keys).
func StrPtr(s string) *string { return &s }

var userIDForSender spec.UserIDForSender = func(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// Send builds, authorises and persists one event. With a TxnID already used
// by the device it returns the stored event instead of sending again.
//
// Concurrent sends to one room are committed together: each request joins
// the room's queue, and whoever holds the room lock builds every queued
// event in order and commits them in one transaction. Order and auth checks
// are exactly those of one-by-one sending; the commit cost is shared.
func (s *Service) Send(ctx context.Context, roomID string, req EventRequest) (*storage.Event, error) {
	r := s.roomEntry(roomID)
	p := &pendingSend{req: req, done: make(chan sendResult, 1)}
	r.qmu.Lock()
	r.queue = append(r.queue, p)
	r.qmu.Unlock()

	r.mu.Lock()
	select {
	case res := <-p.done: // an earlier lock holder sent it with its batch
		r.mu.Unlock()
		return res.ev, res.err
	default:
	}
	r.qmu.Lock()
	batch := r.queue
	r.queue = nil
	r.qmu.Unlock()
	// The batch is shared: one client going away must not fail the others.
	s.sendBatchLocked(context.WithoutCancel(ctx), r, batch)
	r.mu.Unlock()
	res := <-p.done
	return res.ev, res.err
}

// pendingSend is a queued Send waiting for its batch to commit.
type pendingSend struct {
	req  EventRequest
	done chan sendResult
}

type sendResult struct {
	ev  *storage.Event
	err error
}

// sendBatchLocked builds each queued request against the state left by the
// previous ones (a refused request does not affect the others), commits the
// built events in one transaction and delivers every result.
//
// Transaction ids are checked optimistically: a txnId is almost always new,
// so instead of a query per request the commit inserts each txnId only if
// the device has not used it yet. If one was used (a client retrying a send
// that already succeeded), nothing of the batch is committed and the batch
// is built again with every txnId looked up first, which answers the retry
// with the original event.
func (s *Service) sendBatchLocked(ctx context.Context, r *room, batch []*pendingSend) {
	results := make([]sendResult, len(batch))
	deliver := func() {
		for i, p := range batch {
			p.done <- results[i]
		}
	}
	if !r.loaded || r.behind {
		if err := s.refreshRoom(ctx, r); err != nil {
			for i := range results {
				results[i].err = err
			}
			s.forgetUnloaded(r)
			deliver()
			return
		}
	}
	for attempt := 0; ; attempt++ {
		err := s.buildAndCommitLocked(ctx, r, batch, results, false)
		if errors.Is(err, errTxnUsed) {
			clear(results)
			err = s.buildAndCommitLocked(ctx, r, batch, results, true)
		}
		if !errors.Is(err, errRoomMoved) || attempt == maxRoomMovedRetries {
			break
		}
		// Another instance wrote to the room (cluster.go): rebuild on its head.
		clear(results)
		if err := s.refreshRoom(ctx, r); err != nil {
			for i := range results {
				results[i].err = err
			}
			break
		}
	}
	deliver()
}

// errTxnUsed aborts a commit that found a txnId the device already used.
var errTxnUsed = errors.New("transaction id already used")

// buildAndCommitLocked builds and commits a batch, filling results. With
// lookupTxns each txnId is looked up before building; otherwise a used one
// makes it return errTxnUsed with nothing committed (results then undefined).
func (s *Service) buildAndCommitLocked(ctx context.Context, r *room, batch []*pendingSend, results []sendResult, lookupTxns bool) error {
	var built []*builtEvent
	var builtIdx []int
	var dupOf map[int]int
	// build builds the batch on the cached state; a commit that finds the
	// room moved on another instance (cluster.go) reloads it and calls
	// build again, holding the room's lock.
	build := func() ([]*builtEvent, error) {
		clear(results)
		built, builtIdx, dupOf = nil, nil, make(map[int]int)
		s.buildBatchLocked(ctx, r, batch, results, lookupTxns, &built, &builtIdx, dupOf)
		return built, nil
	}
	build()
	refused := slices.ContainsFunc(results, func(res sendResult) bool { return res.err != nil })
	if refused && s.movedSinceCached(ctx, r) {
		return errRoomMoved // a refusal may come from stale state: rebuild on the new head
	}
	if len(built) > 0 {
		rows, err := s.commitRebuilding(ctx, r, built, nil, build)
		if (errors.Is(err, errTxnUsed) && !lookupTxns) || errors.Is(err, errRoomMoved) {
			return err
		}
		for k, i := range builtIdx {
			if err != nil {
				results[i].err = err
			} else {
				results[i].ev = rows[k]
			}
		}
	}
	for i, j := range dupOf {
		results[i] = results[j]
	}
	return nil
}

// buildBatchLocked is the build step of buildAndCommitLocked.
func (s *Service) buildBatchLocked(ctx context.Context, r *room, batch []*pendingSend, results []sendResult, lookupTxns bool, builtOut *[]*builtEvent, builtIdxOut *[]int, dupOf map[int]int) {
	overlay := make(map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU)
	prevID, depth := r.latestID, r.depth
	var built []*builtEvent
	var builtIdx []int
	firstOfTxn := map[[3]string]int{}
	defer func() { *builtOut, *builtIdxOut = built, builtIdx }()
	for i, p := range batch {
		req := p.req
		if req.TxnID != "" {
			key := [3]string{req.Sender, req.DeviceID, req.txnKey(r.id)}
			if j, ok := firstOfTxn[key]; ok {
				dupOf[i] = j // the same txnId twice in one batch: one event
				continue
			}
			firstOfTxn[key] = i
			if lookupTxns {
				if prev, err := s.txnEvent(ctx, r.id, req); err != nil || prev != nil {
					results[i] = sendResult{prev, err}
					continue
				}
			}
		}
		be, err := s.buildLocked(r, req, overlay, prevID, depth+1)
		if err != nil {
			results[i].err = err
			if req.TxnID != "" && !lookupTxns {
				// A retry of a send that succeeded earlier answers with
				// that event even if the send would be refused now.
				if prev, lerr := s.txnEvent(ctx, r.id, req); lerr != nil || prev != nil {
					results[i] = sendResult{prev, lerr}
				}
			}
			continue
		}
		built = append(built, be)
		builtIdx = append(builtIdx, i)
		prevID, depth = be.pdu.EventID(), depth+1
	}
}

// txnKey scopes a transaction id the way Synapse does (by request path):
// the same txnId sent to another room, or as another event type or endpoint,
// is a different request.
// The parts are joined with U+001F (unit separator): PostgreSQL text cannot
// hold NUL, and room ids and event types never contain control characters.
func (req EventRequest) txnKey(roomID string) string {
	return roomID + "\x1f" + req.Type + "\x1f" + req.TxnID
}

func (s *Service) txnEvent(ctx context.Context, roomID string, req EventRequest) (*storage.Event, error) {
	id, err := s.db.TxnEventID(ctx, req.Sender, req.DeviceID, req.txnKey(roomID))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	return s.db.EventByID(ctx, id)
}

// builtEvent is a PDU waiting to be committed with its server-side extras.
type builtEvent struct {
	pdu      gomatrixserverlib.PDU
	req      EventRequest
	unsigned map[string]any
}

// buildLocked builds and auth-checks one event against the room state plus
// overlay (the uncommitted events of this batch), updating overlay.
func (s *Service) buildLocked(r *room, req EventRequest, overlay map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU, prevID string, depth int64) (*builtEvent, error) {
	content := req.Content
	if len(content) == 0 {
		content = json.RawMessage("{}")
	}
	if !gjson.ValidBytes(content) || !gjson.ParseBytes(content).IsObject() {
		return nil, mautrix.MBadJSON.WithMessage("Event content must be a JSON object")
	}
	proto := gomatrixserverlib.ProtoEvent{
		SenderID: req.Sender,
		RoomID:   r.id,
		Type:     req.Type,
		StateKey: req.StateKey,
		Content:  spec.RawJSON(content),
		Depth:    depth,
	}
	if prevID != "" {
		proto.PrevEvents = []string{prevID}
	} else {
		proto.PrevEvents = []string{}
	}
	if req.Type == spec.MRoomRedaction {
		if !RedactsInContent(r.version.Version()) {
			proto.Redacts = req.Redacts
		}
	}
	if req.Type == spec.MRoomCreate && r.version.DomainlessRoomIDs() {
		proto.RoomID = ""
	}
	eb := r.version.NewEventBuilderFromProtoEvent(&proto)
	provider := &stateProvider{r: r, overlay: overlay}
	if err := eb.AddAuthEvents(provider); err != nil {
		return nil, mautrix.MBadJSON.WithMessage("Invalid event: %v", err)
	}
	var pdu gomatrixserverlib.PDU
	var err error
	if fastBuildable(r.version, req) {
		pdu, err = buildFast(eb, r.version, time.Now(), s.serverName, s.key)
	} else {
		pdu, err = eb.Build(time.Now(), s.serverName, s.key.ID, s.key.PrivateKey)
	}
	if err != nil {
		var tooLarge gomatrixserverlib.EventValidationError
		if errors.As(err, &tooLarge) && tooLarge.Code == gomatrixserverlib.EventValidationTooLarge {
			return nil, mautrix.MTooLarge.WithMessage("Event is larger than %d bytes", MaxEventSize)
		}
		return nil, mautrix.MBadJSON.WithMessage("Invalid event: %v", err)
	}
	if len(pdu.JSON()) > MaxEventSize {
		return nil, mautrix.MTooLarge.WithMessage("Event is larger than %d bytes", MaxEventSize)
	}
	if err := gomatrixserverlib.Allowed(pdu, provider, userIDForSender); err != nil {
		var notAllowed *gomatrixserverlib.NotAllowed
		if errors.As(err, &notAllowed) {
			return nil, mautrix.MForbidden.WithMessage("%s", notAllowed.Message)
		}
		return nil, mautrix.MForbidden.WithMessage("%v", err)
	}
	be := &builtEvent{pdu: pdu, req: req}
	if req.StateKey != nil {
		key := gomatrixserverlib.StateKeyTuple{EventType: req.Type, StateKey: *req.StateKey}
		if prev, _ := provider.get(req.Type, *req.StateKey); prev != nil {
			be.unsigned = map[string]any{
				"prev_content":   json.RawMessage(prev.Content()),
				"prev_sender":    string(prev.SenderID()),
				"replaces_state": prev.EventID(),
			}
		}
		overlay[key] = pdu
	}
	return be, nil
}

// sendLocked builds a batch of events in order and commits them in one
// transaction. extra runs inside that transaction (e.g. to insert the room row).
// With several instances, a room found moved on by another instance is
// reloaded and the batch rebuilt under the room's lock (commitRebuilding),
// so writes of another instance cannot starve it.
func (s *Service) sendLocked(ctx context.Context, r *room, reqs []EventRequest, extra func(tx *storage.Tx) error) ([]*storage.Event, error) {
	build := func() ([]*builtEvent, error) { return s.buildAllLocked(r, reqs) }
	for attempt := 0; ; attempt++ {
		built, err := build()
		if err != nil {
			if attempt < maxRoomMovedRetries && s.movedSinceCached(ctx, r) {
				if err := s.refreshRoom(ctx, r); err != nil {
					return nil, err
				}
				continue // refused on stale state: build again on the new head
			}
			return nil, err
		}
		evs, err := s.commitRebuilding(ctx, r, built, extra, build)
		if !errors.Is(err, errRoomMoved) || attempt == maxRoomMovedRetries {
			return evs, err
		}
		// Another instance wrote to the room (cluster.go): rebuild on its head.
		if err := s.refreshRoom(ctx, r); err != nil {
			return nil, err
		}
	}
}

// buildAllLocked builds reqs in order on the room's cached head.
func (s *Service) buildAllLocked(r *room, reqs []EventRequest) ([]*builtEvent, error) {
	overlay := make(map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU)
	prevID, depth := r.latestID, r.depth
	built := make([]*builtEvent, 0, len(reqs))
	for _, req := range reqs {
		be, err := s.buildLocked(r, req, overlay, prevID, depth+1)
		if err != nil {
			return nil, err
		}
		if req.Type == spec.MRoomCreate && r.version.DomainlessRoomIDs() {
			// v12: the room id is derived from the create event's id.
			r.id = "!" + be.pdu.EventID()[1:]
		}
		built = append(built, be)
		prevID, depth = be.pdu.EventID(), depth+1
	}
	return built, nil
}

// commitLocked persists built events in one transaction; after the commit
// the room cache, the recent-events ring and the notifier move forward.
func (s *Service) commitLocked(ctx context.Context, r *room, built []*builtEvent, extra func(tx *storage.Tx) error) ([]*storage.Event, error) {
	return s.commitRebuilding(ctx, r, built, extra, nil)
}

// commitRebuilding is commitLocked where, with several instances, a room
// found moved on by another instance is reloaded and rebuilt with rebuild
// (when not nil) inside the transaction, under the room's lock, so a busy
// room cannot starve this instance's writes.
func (s *Service) commitRebuilding(ctx context.Context, r *room, built []*builtEvent, extra func(tx *storage.Tx) error, rebuild func() ([]*builtEvent, error)) ([]*storage.Event, error) {
	var rows []*storage.Event
	clustered := s.notifier.clustered()
	err := s.db.Write(ctx, func(tx *storage.Tx) error {
		if clustered { // several instances: lock the room, check its head (cluster.go)
			err := s.checkRoomHead(ctx, tx, r)
			if errors.Is(err, errRoomMoved) && rebuild != nil {
				if err = s.refreshRoom(ctx, r); err == nil {
					built, err = rebuild()
				}
			}
			if err != nil {
				return err
			}
		}
		rows = make([]*storage.Event, len(built))
		if extra != nil {
			if err := extra(tx); err != nil {
				return err
			}
		}
		for i, be := range built {
			pos, err := tx.NextPos(ctx)
			if err != nil {
				return err
			}
			row, err := s.toRow(be, pos)
			if err != nil {
				return err
			}
			if err := tx.InsertEvent(ctx, row); err != nil {
				return err
			}
			if be.req.Type == spec.MRoomRedaction {
				if err := s.applyRedaction(ctx, tx, r, be); err != nil {
					return err
				}
			}
			if be.req.TxnID != "" {
				isNew, err := tx.InsertTxnIfNew(ctx, be.req.Sender, be.req.DeviceID, be.req.txnKey(r.id), row.EventID)
				if err != nil {
					return err
				} else if !isNew {
					return errTxnUsed
				}
			}
			rows[i] = row
		}
		tx.OnCommit(func() { s.applyCommitted(r, built, rows) })
		return nil
	})
	if errors.Is(err, errTxnUsed) {
		return nil, err // rolled back before anything reached the cache
	} else if err != nil {
		// The cache may hold nothing of this batch, but be safe: reload next time.
		r.loaded = false
		return nil, err
	}
	return rows, nil
}

// applyCommitted moves the cached room state and the notifier forward.
// It runs in commit order under the storage write lock. The notifier moves
// once, to the batch's last position: a /sync woken by the batch then sees
// all of it rather than only its first event.
func (s *Service) applyCommitted(r *room, built []*builtEvent, rows []*storage.Event) {
	if len(built) == 0 {
		return
	}
	wake := Wake{Rooms: []string{r.id}}
	for i, be := range built {
		pdu := be.pdu
		if sk := pdu.StateKey(); sk != nil {
			r.state[gomatrixserverlib.StateKeyTuple{EventType: pdu.Type(), StateKey: *sk}] = pdu
		}
		r.latestID = pdu.EventID()
		r.depth = pdu.Depth()
		r.headPos = rows[i].Pos
		r.recent.append(rows[i])
		if pdu.Type() == spec.MRoomMember && pdu.StateKey() != nil {
			target := *pdu.StateKey()
			m, _ := pdu.Membership()
			s.notifier.SetMembership(r.id, target, m == spec.Join, rows[i].Pos)
			wake.Users = append(wake.Users, target)
		}
	}
	s.notifier.Advance(rows[len(rows)-1].Pos, wake)
}

// toRow turns a built PDU into a storage row.
func (s *Service) toRow(be *builtEvent, pos storage.StreamPos) (*storage.Event, error) {
	pdu := be.pdu
	row := &storage.Event{
		Pos:      pos,
		EventID:  pdu.EventID(),
		RoomID:   pdu.RoomID().String(),
		Type:     pdu.Type(),
		StateKey: pdu.StateKey(),
		Sender:   string(pdu.SenderID()),
		OriginTS: int64(pdu.OriginServerTS()),
		Depth:    pdu.Depth(),
		PDUJSON:  pdu.JSON(),
		Unsigned: []byte("{}"),
		Content:  pdu.Content(),
	}
	if pdu.Type() == spec.MRoomCreate && row.RoomID == "" {
		row.RoomID = "!" + pdu.EventID()[1:]
	}
	if be.unsigned != nil {
		b, err := json.Marshal(be.unsigned)
		if err != nil {
			return nil, err
		}
		row.Unsigned = b
	}
	content := gjson.ParseBytes(pdu.Content())
	if pdu.Type() == spec.MRoomMember {
		if m := content.Get("membership"); m.Type == gjson.String {
			row.Membership = StrPtr(m.Str)
		}
	}
	if rel := content.Get(`m\.relates_to`); rel.IsObject() {
		if t := rel.Get("rel_type"); t.Type == gjson.String {
			row.RelType = StrPtr(t.Str)
		}
		if id := rel.Get("event_id"); id.Type == gjson.String {
			row.RelatesTo = StrPtr(id.Str)
		}
		if row.RelType == nil {
			if irt := rel.Get(`m\.in_reply_to.event_id`); irt.Type == gjson.String {
				row.RelType = StrPtr("m.in_reply_to")
				row.RelatesTo = StrPtr(irt.Str)
			}
		}
	}
	if b := content.Get("body"); b.Type == gjson.String && pdu.StateKey() == nil {
		row.Body = StrPtr(b.Str)
	}
	if be.req.TxnID != "" {
		row.TxnID = StrPtr(be.req.TxnID)
		row.TxnDevice = StrPtr(be.req.DeviceID)
	}
	return row, nil
}

// applyRedaction redacts the target event in storage (and in the cached state
// when it is a current state event).
func (s *Service) applyRedaction(ctx context.Context, tx *storage.Tx, r *room, be *builtEvent) error {
	target, err := s.db.EventByID(ctx, be.req.Redacts)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && target.RoomID != r.id) {
		return nil // redacting an unknown event is allowed; nothing to change
	} else if err != nil {
		return err
	}
	if target.RedactedBy != nil {
		return nil
	}
	redacted, err := r.version.RedactEventJSON(target.PDUJSON)
	if err != nil {
		return fmt.Errorf("redacting %s: %w", target.EventID, err)
	}
	unsigned := map[string]any{}
	_ = json.Unmarshal(target.Unsigned, &unsigned)
	delete(unsigned, "prev_content")
	unsigned["redacted_because"] = redactionClientEvent(be.pdu) // spec: a ClientEvent, not the PDU
	ub, _ := json.Marshal(unsigned)
	if err := tx.RedactEvent(ctx, target.EventID, redacted, ub, be.pdu.EventID()); err != nil {
		return err
	}
	after := *target
	after.PDUJSON, after.Unsigned, after.RedactedBy = redacted, ub, StrPtr(be.pdu.EventID())
	after.Body, after.RelType, after.RelatesTo = nil, nil, nil
	tx.OnCommit(func() { r.recent.replace(&after) })
	if target.StateKey != nil {
		key := gomatrixserverlib.StateKeyTuple{EventType: target.Type, StateKey: *target.StateKey}
		if cur := r.state[key]; cur != nil && cur.EventID() == target.EventID {
			if pdu, err := r.version.NewEventFromTrustedJSONWithEventID(target.EventID, redacted, true); err == nil {
				tx.OnCommit(func() { r.state[key] = pdu })
			}
		}
	}
	return nil
}

// redactionClientEvent renders a redaction PDU in the client format that
// unsigned.redacted_because carries (with event_id, without PDU internals).
func redactionClientEvent(pdu gomatrixserverlib.PDU) ClientEvent {
	ce := ClientEvent{
		Content:        json.RawMessage(pdu.Content()),
		EventID:        pdu.EventID(),
		OriginServerTS: int64(pdu.OriginServerTS()),
		RoomID:         pdu.RoomID().String(),
		Sender:         string(pdu.SenderID()),
		Type:           pdu.Type(),
		Redacts:        pdu.Redacts(),
	}
	if ce.Redacts == "" {
		ce.Redacts = gjson.GetBytes(pdu.Content(), "redacts").Str
	}
	return ce
}
