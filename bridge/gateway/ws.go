package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/bridge"
	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// The WebSocket protocol (JSON text frames; binary frames are read as
// text):
//
// client → server
//
//	{"type":"join","room":R,"token":T,"since"?:EVENT_ID}   subscribe (joining the Matrix room if needed)
//	{"type":"leave","room":R}                              unsubscribe (the Matrix membership stays)
//	{"type":"message","room":R,"content":"…","msgtype"?:"m.text","id"?:ID}
//	{"type":"ping","id"?:ID}
//
// server → client
//
//	{"type":"joined","room":R,"roomId","readOnly"}
//	{"type":"message","room":R,"roomId","senderId","senderName","timestamp","content","eventId","msgtype"}
//	{"type":"sent","room":R,"roomId","eventId","id"?}
//	{"type":"left","room":R,"roomId"}
//	{"type":"pong","id"?}
//	{"type":"error","errcode","error","room"?,"id"?}
//
// R is whatever the client called the room in its join (room id, alias or
// bare alias name); frames about that room carry the same R. The token of
// a join may be left out when the upgrade request carried one
// (Authorization: Bearer or ?access_token=).

// Frame types.
const (
	frameJoin    = "join"
	frameJoined  = "joined"
	frameLeave   = "leave"
	frameLeft    = "left"
	frameMessage = "message"
	frameSent    = "sent"
	framePing    = "ping"
	framePong    = "pong"
	frameError   = "error"
)

// replayPage is how many events one database read of a catch-up returns.
const replayPage = 500

var (
	errRoomDeleted = mautrix.MNotFound.WithMessage("The room was deleted")
	errNotJoinedWS = mautrix.MForbidden.WithMessage("Join the room on this connection first")
)

// clientFrame is any frame a client sends.
type clientFrame struct {
	Type    string          `json:"type"`
	Room    string          `json:"room"`
	Token   string          `json:"token"`
	Since   string          `json:"since"`
	Content string          `json:"content"`
	MsgType string          `json:"msgtype"`
	ID      json.RawMessage `json:"id,omitempty"`
}

// messageFrame is a room message sent to a client.
type messageFrame struct {
	Type       string `json:"type"`
	Room       string `json:"room"`
	RoomID     string `json:"roomId"`
	SenderID   string `json:"senderId"`
	SenderName string `json:"senderName"`
	Timestamp  int64  `json:"timestamp"`
	Content    string `json:"content"`
	EventID    string `json:"eventId"`
	MsgType    string `json:"msgtype"`
}

// ackFrame is joined, left, sent and pong.
type ackFrame struct {
	Type     string          `json:"type"`
	Room     string          `json:"room,omitempty"`
	RoomID   string          `json:"roomId,omitempty"`
	EventID  string          `json:"eventId,omitempty"`
	ReadOnly *bool           `json:"readOnly,omitempty"`
	ID       json.RawMessage `json:"id,omitempty"`
}

// errorFrame reports a refused frame or the end of a subscription.
type errorFrame struct {
	Type    string          `json:"type"`
	ErrCode string          `json:"errcode"`
	Error   string          `json:"error"`
	Room    string          `json:"room,omitempty"`
	ID      json.RawMessage `json:"id,omitempty"`
}

// WSHandler serves the WebSocket endpoint (/ws).
func (g *Gateway) WSHandler() http.Handler { return http.HandlerFunc(g.serveWS) }

func (g *Gateway) serveWS(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		g.d.WriteError(w, r, mautrix.MUnrecognized.WithStatus(http.StatusBadRequest).WithMessage("This endpoint speaks WebSocket (RFC 6455): send an upgrade request"))
		return
	}
	// A token on the upgrade request itself must be valid; without one,
	// each join frame brings its own.
	var header *Caller
	if r.Header.Get("Authorization") != "" || r.URL.Query().Get("access_token") != "" {
		c, err := g.d.Authenticate(r, "")
		if err != nil {
			g.d.WriteError(w, r, err)
			return
		}
		header = c
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		g.d.WriteError(w, r, mautrix.MUnknown.WithStatus(http.StatusServiceUnavailable).WithMessage("The server is shutting down"))
		return
	}
	g.conns.Add(1)
	g.mu.Unlock()
	defer g.conns.Done()

	// The server's read and write timeouts would end a hijacked connection.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	// Tokens travel in frames or headers, never in cookies: any origin may
	// connect (the rest of the API is CORS-open too).
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		g.log.DebugContext(r.Context(), "websocket upgrade failed", "err", err)
		return
	}
	ws.SetReadLimit(g.d.WS.HardFrameBytes)
	ctx, cancel := context.WithCancel(g.ctx)
	c := &wsConn{
		g: g, ws: ws, header: header, ctx: ctx, cancel: cancel,
		req:    r.Clone(context.WithoutCancel(r.Context())),
		out:    make(chan []byte, 256),
		wakeCh: make(chan struct{}, 1),
		subs:   make(map[string]*subscription),
	}
	c.authGen = g.d.DB.AuthGeneration()
	c.run()
}

// wsConn is one WebSocket connection. The handler goroutine reads frames
// and acts on them; one writer goroutine owns the socket's write side and
// the subscriptions' cursors.
type wsConn struct {
	g      *Gateway
	ws     *websocket.Conn
	req    *http.Request // the upgrade request, for authenticating tokens
	header *Caller       // the upgrade request's own token, if any
	ctx    context.Context
	cancel context.CancelFunc

	out     chan []byte   // frames queued by the reader (acks, errors)
	wakeCh  chan struct{} // something happened in a subscribed room
	authGen uint64        // writer: the auth generation last checked
	pinging atomic.Bool

	mu   sync.Mutex
	subs map[string]*subscription // by room id
}

// subscription is one joined room of a connection.
type subscription struct {
	roomID string
	label  string // what the client called the room
	token  string // "" = the upgrade request's token
	closed atomic.Bool

	// Owned by the writer goroutine.
	caller        *Caller
	cursor        storage.StreamPos // everything up to here has been handled
	startPos      storage.StreamPos // where live tracking begins (the join)
	member        bool              // joined to the Matrix room (else reading a world_readable room)
	worldReadable bool
}

func (c *wsConn) run() {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.writeLoop()
	}()
	c.readLoop()
	c.cancel()
	wg.Wait()
	c.mu.Lock()
	for id, s := range c.subs {
		s.closed.Store(true)
		c.g.hub.remove(id, c)
	}
	c.subs = nil
	c.mu.Unlock()
}

// signal wakes the writer (non-blocking).
func (c *wsConn) signal() {
	select {
	case c.wakeCh <- struct{}{}:
	default:
	}
}

// enqueue queues a frame for the writer. A client that does not read its
// frames is disconnected rather than buffered without bound.
func (c *wsConn) enqueue(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		c.g.log.Error("encoding a websocket frame", "err", err)
		return
	}
	select {
	case c.out <- b:
	default:
		c.g.log.Debug("websocket client does not read its frames; closing")
		c.cancel()
	}
}

// sendError queues an error frame for err (a Matrix error, else M_UNKNOWN).
func (c *wsConn) sendError(err error, room string, id json.RawMessage) {
	var re mautrix.RespError
	if !errors.As(err, &re) {
		if errors.Is(err, storage.ErrNotFound) {
			re = mautrix.MNotFound.WithMessage("Not found")
		} else {
			c.g.log.Error("websocket request failed", "err", err)
			re = mautrix.MUnknown.WithMessage("Internal server error")
		}
	}
	c.enqueue(errorFrame{Type: frameError, ErrCode: re.ErrCode, Error: re.Err, Room: room, ID: id})
}

func (c *wsConn) readLoop() {
	limit := c.g.d.WS.MaxFrameBytes
	for {
		// Not bound to c.ctx: a closing handshake needs the reader running.
		_, rd, err := c.ws.Reader(context.Background())
		if err != nil {
			return // closed by the peer, by the writer, or over the hard frame limit
		}
		data, err := io.ReadAll(io.LimitReader(rd, limit+1))
		if err != nil {
			return
		}
		if int64(len(data)) > limit {
			if _, err := io.Copy(io.Discard, rd); err != nil {
				return
			}
			c.sendError(mautrix.MTooLarge.WithMessage("Frame is larger than %d bytes", limit), "", nil)
			continue
		}
		c.handle(data)
		if c.ctx.Err() != nil {
			return
		}
	}
}

// handle acts on one client frame.
func (c *wsConn) handle(data []byte) {
	var f clientFrame
	if err := decodeJSONBytes(data, &f); err != nil {
		var re mautrix.RespError
		if errors.As(err, &re) && len(data) > 0 && data[0] == '{' {
			f.ID = json.RawMessage(gjson.GetBytes(data, "id").Raw)
		}
		c.sendError(err, "", nilIfEmpty(f.ID))
		return
	}
	f.ID = nilIfEmpty(f.ID)
	ctx := c.ctx
	switch f.Type {
	case frameJoin:
		c.join(ctx, f)
	case frameLeave:
		c.leave(ctx, f)
	case frameMessage:
		c.message(ctx, f)
	case framePing:
		c.enqueue(ackFrame{Type: framePong, ID: f.ID})
	case "":
		c.sendError(errMissingParam.WithMessage("type is required"), f.Room, f.ID)
	default:
		c.sendError(mautrix.MUnrecognized.WithMessage("Unknown frame type %q (expected join, leave, message or ping)", truncate(f.Type, 40)), f.Room, f.ID)
	}
}

func nilIfEmpty(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	return raw
}

// authenticate resolves a frame's token, or the upgrade request's.
func (c *wsConn) authenticate(token string) (*Caller, error) {
	if token == "" {
		if c.header == nil {
			return nil, mautrix.MMissingToken.WithMessage("Missing access token: join frames need \"token\" (or connect with Authorization: Bearer)")
		}
	}
	return c.g.d.Authenticate(c.req, token)
}

func (c *wsConn) join(ctx context.Context, f clientFrame) {
	caller, err := c.authenticate(f.Token)
	if err != nil {
		c.sendError(err, f.Room, f.ID)
		return
	}
	roomID, err := c.g.resolveRoom(ctx, f.Room)
	if err != nil {
		c.sendError(err, f.Room, f.ID)
		return
	}
	c.mu.Lock()
	old := c.subs[roomID]
	full := old == nil && len(c.subs) >= c.g.d.WS.MaxRooms
	c.mu.Unlock()
	if full {
		c.sendError(mautrix.MLimitExceeded.WithMessage("At most %d rooms per connection", c.g.d.WS.MaxRooms), f.Room, f.ID)
		return
	}
	rs := c.g.d.Rooms
	membership, err := rs.Membership(ctx, roomID, caller.UserID)
	if err != nil {
		c.sendError(err, f.Room, f.ID)
		return
	}
	worldReadable, err := rs.WorldReadable(ctx, roomID)
	if err != nil {
		c.sendError(err, f.Room, f.ID)
		return
	}
	member := membership == spec.Join
	if !member && c.g.d.RateLimit != nil {
		if err := c.g.d.RateLimit(caller); err != nil { // a Matrix join, rate-limited as /join is
			c.sendError(err, f.Room, f.ID)
			return
		}
	}
	if !member {
		if err := c.g.joinRoom(ctx, caller, roomID); err == nil {
			member = true
		} else if !worldReadable {
			c.sendError(err, f.Room, f.ID)
			return
		} // else: read the world_readable room without joining
	}
	s := &subscription{roomID: roomID, label: f.Room, token: f.Token, caller: caller, member: member, worldReadable: worldReadable}
	s.startPos = rs.Notifier().Latest()
	s.cursor = s.startPos
	if f.Since != "" {
		ev, err := c.g.d.DB.EventByID(ctx, f.Since)
		if errors.Is(err, storage.ErrNotFound) || (err == nil && ev.RoomID != roomID) {
			c.sendError(mautrix.MNotFound.WithMessage("since: event %s is not in this room", truncate(f.Since, 100)), f.Room, f.ID)
			return
		} else if err != nil {
			c.sendError(err, f.Room, f.ID)
			return
		}
		s.cursor = min(ev.Pos, s.startPos)
	}
	readOnly := !member
	// The ack is queued before the subscription exists: the writer sends
	// it before any message of the room.
	c.enqueue(ackFrame{Type: frameJoined, Room: f.Room, RoomID: roomID, ReadOnly: &readOnly, ID: f.ID})
	c.mu.Lock()
	if c.subs == nil { // the connection is closing
		c.mu.Unlock()
		return
	}
	if old != nil {
		old.closed.Store(true)
	}
	c.subs[roomID] = s
	c.g.hub.add(roomID, c) // under c.mu: the connection's clean-up cannot miss it
	c.mu.Unlock()
	c.g.hub.start(c.g.ctx)
	c.signal()
}

// subFor finds the subscription a frame names: by the name used in the
// join, by room id, or by resolving the name.
func (c *wsConn) subFor(ctx context.Context, ref string) (*subscription, error) {
	if ref == "" {
		return nil, errMissingParam.WithMessage("room is required")
	}
	c.mu.Lock()
	for _, s := range c.subs {
		if s.label == ref || s.roomID == ref {
			c.mu.Unlock()
			return s, nil
		}
	}
	c.mu.Unlock()
	roomID, err := c.g.resolveRoom(ctx, ref)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.subs[roomID]; s != nil {
		return s, nil
	}
	return nil, errNotJoinedWS
}

func (c *wsConn) leave(ctx context.Context, f clientFrame) {
	s, err := c.subFor(ctx, f.Room)
	if err != nil {
		c.sendError(err, f.Room, f.ID)
		return
	}
	c.drop(s)
	c.enqueue(ackFrame{Type: frameLeft, Room: f.Room, RoomID: s.roomID, ID: f.ID})
}

// drop ends a subscription.
func (c *wsConn) drop(s *subscription) {
	s.closed.Store(true)
	c.mu.Lock()
	if c.subs != nil && c.subs[s.roomID] == s {
		delete(c.subs, s.roomID)
	}
	c.mu.Unlock()
	c.g.hub.remove(s.roomID, c)
}

// endRoom ends the subscription to roomID, telling the client why.
func (c *wsConn) endRoom(roomID string, why error) {
	c.mu.Lock()
	s := c.subs[roomID]
	c.mu.Unlock()
	if s == nil || s.closed.Load() {
		return
	}
	c.drop(s)
	c.sendError(why, s.label, nil)
}

func (c *wsConn) message(ctx context.Context, f clientFrame) {
	s, err := c.subFor(ctx, f.Room)
	if err != nil {
		c.sendError(err, f.Room, f.ID)
		return
	}
	// Authenticate again: a revoked token stops working at once.
	caller, err := c.authenticate(s.token)
	if err != nil {
		c.endToken(s.token, err)
		c.sendError(err, f.Room, f.ID)
		return
	}
	if c.g.d.RateLimit != nil {
		if err := c.g.d.RateLimit(caller); err != nil {
			c.sendError(err, f.Room, f.ID)
			return
		}
	}
	var txnID string
	if f.ID != nil {
		txnID = "ws-" + strings.Trim(string(f.ID), `"`)
	}
	req, err := messageRequest(caller, f.Content, f.MsgType, txnID)
	if err != nil {
		c.sendError(err, f.Room, f.ID)
		return
	}
	ev, err := c.g.send(ctx, caller, s.roomID, req)
	if err != nil {
		c.sendError(err, f.Room, f.ID)
		return
	}
	c.enqueue(ackFrame{Type: frameSent, Room: f.Room, RoomID: s.roomID, EventID: ev.EventID, ID: f.ID})
}

// endToken ends every subscription made with token (after it stopped
// authenticating), with err as the reason.
func (c *wsConn) endToken(token string, err error) {
	c.mu.Lock()
	var ended []*subscription
	for _, s := range c.subs {
		if s.token == token {
			ended = append(ended, s)
		}
	}
	c.mu.Unlock()
	for _, s := range ended {
		c.drop(s)
		c.sendError(err, s.label, nil)
	}
}

func (c *wsConn) writeLoop() {
	o := c.g.d.WS
	ping := time.NewTicker(o.PingInterval)
	defer ping.Stop()
	authTick := time.NewTicker(time.Second)
	defer authTick.Stop()
	for {
		var err error
		select {
		case <-c.ctx.Done():
			if c.g.ctx.Err() != nil {
				_ = c.ws.Close(websocket.StatusGoingAway, "server shutting down")
			} else {
				_ = c.ws.CloseNow()
			}
			return
		case b := <-c.out:
			err = c.write(b)
		case <-c.wakeCh:
			err = c.pull()
		case <-authTick.C:
			c.checkAuth()
		case <-ping.C:
			if c.pinging.CompareAndSwap(false, true) {
				go func() {
					defer c.pinging.Store(false)
					// Not bound to c.ctx: cancelling a ping's context makes the
					// library cut the connection, and shutdown wants a close frame.
					ctx, cancel := context.WithTimeout(context.Background(), o.PingTimeout)
					defer cancel()
					if err := c.ws.Ping(ctx); err != nil && c.ctx.Err() == nil {
						c.g.log.Debug("websocket peer did not answer a ping; closing", "err", err)
						c.cancel()
					}
				}()
			}
		}
		if err != nil {
			if c.ctx.Err() == nil {
				c.g.log.Debug("websocket write failed; closing", "err", err)
			}
			_ = c.ws.CloseNow()
			return
		}
	}
}

func (c *wsConn) write(b []byte) error {
	// Bounded by the write timeout, not by c.ctx: a write cancelled midway
	// cuts the connection, so shutdown could not send its close frame.
	ctx, cancel := context.WithTimeout(context.Background(), c.g.d.WS.WriteTimeout)
	defer cancel()
	return c.ws.Write(ctx, websocket.MessageText, b)
}

func (c *wsConn) writeFrame(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.write(b)
}

// drainOut writes the queued frames.
func (c *wsConn) drainOut() error {
	for {
		select {
		case b := <-c.out:
			if err := c.write(b); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

// checkAuth re-authenticates the subscriptions' tokens after any token,
// device or user changed on the server, ending those that stopped working.
func (c *wsConn) checkAuth() {
	gen := c.g.d.DB.AuthGeneration()
	if gen == c.authGen {
		return
	}
	c.authGen = gen
	for _, s := range c.snapshot() {
		caller, err := c.authenticate(s.token)
		if err != nil {
			c.endToken(s.token, err)
			continue
		}
		s.caller = caller
	}
}

func (c *wsConn) snapshot() []*subscription {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*subscription, 0, len(c.subs))
	for _, s := range c.subs {
		out = append(out, s)
	}
	return out
}

// pull sends each subscription what happened in its room since its cursor.
func (c *wsConn) pull() error {
	c.checkAuth()
	subs := c.snapshot()
	// Acks queued before these subscriptions existed go out first.
	if err := c.drainOut(); err != nil {
		return err
	}
	for _, s := range subs {
		if err := c.pullSub(s); err != nil {
			return err
		}
	}
	return nil
}

func (c *wsConn) pullSub(s *subscription) error {
	rs := c.g.d.Rooms
	latest := rs.Notifier().Latest()
	for s.cursor < latest && !s.closed.Load() {
		if evs, ok := rs.RecentEvents(s.roomID, s.cursor, latest); ok {
			for _, e := range evs {
				if err := c.process(s, e); err != nil {
					return err
				}
			}
			s.cursor = latest
			return nil
		}
		// Catching up (a since replay or a slow client): read the database
		// a page at a time, keeping what the user may see.
		page, err := c.g.d.DB.RoomEvents(c.ctx, s.roomID, s.cursor, latest, false, replayPage, nil)
		if err != nil {
			return fmt.Errorf("reading room events: %w", err)
		}
		if len(page) == 0 {
			if _, err := c.g.d.DB.RoomByID(c.ctx, s.roomID); errors.Is(err, storage.ErrNotFound) {
				c.endRoom(s.roomID, errRoomDeleted)
				return nil
			}
			s.cursor = latest
			return nil
		}
		vis, err := rs.VisibilityFor(c.ctx, s.roomID, s.caller.UserID)
		if err != nil {
			return err
		}
		visible, err := vis.Filter(c.ctx, page)
		if err != nil {
			return err
		}
		for _, e := range visible {
			if err := c.process(s, e); err != nil {
				return err
			}
		}
		s.cursor = page[len(page)-1].Pos
		if len(page) < replayPage {
			s.cursor = latest
		}
	}
	return nil
}

// process handles one room event for a subscription: messages go to the
// client; after the join, the user's membership and the room's history
// visibility decide whether the subscription goes on.
func (c *wsConn) process(s *subscription, e *storage.Event) error {
	if s.closed.Load() {
		return nil
	}
	live := e.Pos > s.startPos // before it, the visibility filter decided
	switch e.Type {
	case spec.MRoomMember:
		c.g.noteMember(e)
		if !live || e.StateKey == nil || *e.StateKey != s.caller.UserID || e.Membership == nil {
			return nil
		}
		s.member = *e.Membership == spec.Join
		if !s.member && !s.worldReadable {
			c.endRoom(s.roomID, mautrix.MForbidden.WithMessage("You are no longer in this room (%s)", *e.Membership))
		}
		return nil
	case spec.MRoomHistoryVisibility:
		if !live {
			return nil
		}
		s.worldReadable = gjson.GetBytes(e.PDUJSON, "content.history_visibility").Str == rooms.VisibilityWorldReadable
		if !s.member && !s.worldReadable {
			c.endRoom(s.roomID, mautrix.MForbidden.WithMessage("The room is no longer world-readable"))
		}
		return nil
	}
	if live && !s.member && !s.worldReadable {
		return nil
	}
	m, ok := bridge.MessageOf(e)
	if !ok {
		return nil
	}
	return c.writeFrame(messageFrame{
		Type: frameMessage, Room: s.label, RoomID: s.roomID, SenderID: e.Sender,
		SenderName: c.g.displayName(c.ctx, s.roomID, e.Sender), Timestamp: e.OriginTS,
		Content: m.Body, EventID: e.EventID, MsgType: m.MsgType,
	})
}
