// Package gateway is the simple agent gateway of the original design, for
// agents that do not speak Matrix: a small REST API under /api and a
// WebSocket at /ws, both mapped onto the same Matrix rooms.
//
// Tokens are ordinary AgentSpace access tokens (a user's, or an
// appservice's as_token), resolved by the Authenticate function the server
// provides, and every action goes through package rooms: the same
// membership, power-level and history-visibility rules apply as over the
// Matrix client-server API.
package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// Caller is the authenticated user behind a request or a WebSocket join.
type Caller struct {
	UserID   string
	DeviceID string
	IsAdmin  bool
	IsGuest  bool
	// AppserviceID is set for appservice users; AppserviceToken when the
	// token is the appservice's as_token itself.
	AppserviceID    string
	AppserviceToken bool
	TokenHash       string
}

// Deps is what the gateway needs from the server.
type Deps struct {
	Rooms      *rooms.Service
	DB         *storage.DB
	Log        *slog.Logger
	ServerName string
	// Authenticate resolves token; with token "" it reads the request's
	// own Authorization header (or access_token parameter). Errors are
	// Matrix errors (M_MISSING_TOKEN, M_UNKNOWN_TOKEN).
	Authenticate func(r *http.Request, token string) (*Caller, error)
	// Send posts an event as the caller (the server's send path, with its
	// loop breaker); nil means rooms.Service.Send.
	Send func(ctx context.Context, c *Caller, roomID string, req rooms.EventRequest) (*storage.Event, error)
	// RateLimit refuses a caller over its rate (nil: no limit).
	RateLimit func(c *Caller) error
	// ResolveAlias returns the room id of a local alias, or
	// storage.ErrNotFound (nil: the alias table only).
	ResolveAlias func(ctx context.Context, alias string) (string, error)
	// CreatePublicRoom creates the observer room #name for POST /api/rooms
	// {public: true} (nil: a public room with that alias).
	CreatePublicRoom func(ctx context.Context, c *Caller, name, topic string) (string, error)
	// WriteError renders an error as a Matrix error response.
	WriteError func(w http.ResponseWriter, r *http.Request, err error)
	// WS tunes the WebSocket (zero values: defaults).
	WS WSOptions
}

// WSOptions tunes the WebSocket endpoint.
type WSOptions struct {
	// PingInterval is how often the server pings each connection; a peer
	// that does not answer within PingTimeout is disconnected. Default 30s/20s.
	PingInterval, PingTimeout time.Duration
	// WriteTimeout bounds writing one frame to a client. Default 10s.
	WriteTimeout time.Duration
	// MaxFrameBytes is the largest frame accepted; larger ones (up to
	// HardFrameBytes) get an M_TOO_LARGE error frame and the connection
	// stays open. Default 128 KiB.
	MaxFrameBytes int64
	// HardFrameBytes is the largest frame read at all: beyond it the
	// connection is closed with status 1009. Default 1 MiB.
	HardFrameBytes int64
	// MaxRooms caps the rooms one connection may join. Default 100.
	MaxRooms int
}

func (o *WSOptions) defaults() {
	if o.PingInterval <= 0 {
		o.PingInterval = 30 * time.Second
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = 20 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.MaxFrameBytes <= 0 {
		o.MaxFrameBytes = 128 << 10
	}
	if o.HardFrameBytes < o.MaxFrameBytes {
		o.HardFrameBytes = max(1<<20, o.MaxFrameBytes)
	}
	if o.MaxRooms <= 0 {
		o.MaxRooms = 100
	}
}

// Gateway serves /api and /ws.
type Gateway struct {
	d   Deps
	log *slog.Logger
	hub *hub

	ctx    context.Context // ends every WebSocket at shutdown
	cancel context.CancelFunc
	conns  sync.WaitGroup
	closed bool
	mu     sync.Mutex

	names nameCache
}

// New builds the gateway.
func New(d Deps) *Gateway {
	d.WS.defaults()
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Gateway{d: d, log: d.Log, ctx: ctx, cancel: cancel, names: nameCache{m: map[string]string{}}}
	g.hub = newHub(d.Rooms.Notifier())
	return g
}

// Close ends every WebSocket connection (status 1001, going away) and waits
// for them up to ctx's deadline. Idempotent.
func (g *Gateway) Close(ctx context.Context) error {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.cancel()
	done := make(chan struct{})
	go func() {
		g.conns.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// send posts an event as c through the server's send path.
func (g *Gateway) send(ctx context.Context, c *Caller, roomID string, req rooms.EventRequest) (*storage.Event, error) {
	if g.d.Send != nil {
		return g.d.Send(ctx, c, roomID, req)
	}
	return g.d.Rooms.Send(ctx, roomID, req)
}

// errRoomNotFound answers rooms that do not exist (ids, aliases or names).
var errRoomNotFound = mautrix.MNotFound.WithMessage("Room not found")

// resolveRoom turns what a client calls a room into a room id: a room id
// (!…), an alias (#name:server), or a bare name meaning the local alias
// #name:<server> (so the design's room: "demo-room" works).
func (g *Gateway) resolveRoom(ctx context.Context, ref string) (string, error) {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return "", errMissingParam.WithMessage("room is required")
	}
	if len(ref) > 255 || strings.ContainsFunc(ref, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return "", mautrix.MInvalidParam.WithMessage("%q is not a room id, alias or name", truncate(ref, 80))
	}
	if strings.HasPrefix(ref, "!") {
		if _, err := g.d.DB.RoomByID(ctx, ref); errors.Is(err, storage.ErrNotFound) {
			return "", errRoomNotFound
		} else if err != nil {
			return "", err
		}
		return ref, nil
	}
	alias := ref
	if !strings.HasPrefix(ref, "#") {
		if strings.Contains(ref, ":") {
			return "", mautrix.MInvalidParam.WithMessage("%q is not a room id (!…), alias (#…) or name", truncate(ref, 80))
		}
		alias = "#" + ref + ":" + g.d.ServerName
	}
	var roomID string
	var err error
	if g.d.ResolveAlias != nil {
		roomID, err = g.d.ResolveAlias(ctx, alias)
	} else {
		var al *storage.Alias
		if al, err = g.d.DB.AliasByName(ctx, alias); err == nil {
			roomID = al.RoomID
		}
	}
	if errors.Is(err, storage.ErrNotFound) {
		return "", mautrix.MNotFound.WithMessage("Room %s not found", alias)
	}
	return roomID, err
}

// joinRoom makes c join roomID as POST /join would: with their profile,
// and for guests only where m.room.guest_access is can_join.
func (g *Gateway) joinRoom(ctx context.Context, c *Caller, roomID string) error {
	if c.IsGuest {
		ev, err := g.d.Rooms.CurrentStateEvent(ctx, roomID, "m.room.guest_access", "")
		if err != nil {
			return err
		}
		if ev == nil || gjson.GetBytes(ev.Content(), "guest_access").Str != "can_join" {
			return mautrix.MForbidden.WithMessage("Guest access is not allowed in this room")
		}
	}
	req := rooms.MembershipRequest{Sender: c.UserID, Target: c.UserID, Membership: spec.Join}
	if u, err := g.d.DB.UserByID(ctx, c.UserID); err == nil {
		req.DisplayName, req.AvatarURL = u.DisplayName, u.AvatarURL
	}
	_, err := g.d.Rooms.ChangeMembership(ctx, roomID, req)
	return err
}

// nameCache keeps senders' display names per room; member events passing
// through a WebSocket update it.
type nameCache struct {
	mu sync.Mutex
	m  map[string]string // room_id + "\x00" + user_id
}

const maxCachedNames = 100_000

func (g *Gateway) displayName(ctx context.Context, roomID, userID string) string {
	key := roomID + "\x00" + userID
	g.names.mu.Lock()
	n, ok := g.names.m[key]
	g.names.mu.Unlock()
	if ok {
		return n
	}
	n = localpart(userID)
	if ev, err := g.d.Rooms.CurrentStateEvent(ctx, roomID, spec.MRoomMember, userID); err == nil && ev != nil {
		if dn := gjson.GetBytes(ev.Content(), "displayname"); dn.Type == gjson.String && strings.TrimSpace(dn.Str) != "" {
			n = dn.Str
		}
	}
	g.setName(key, n)
	return n
}

// noteMember updates the name cache from an m.room.member event.
func (g *Gateway) noteMember(e *storage.Event) {
	if e.StateKey == nil {
		return
	}
	n := localpart(*e.StateKey)
	if dn := gjson.GetBytes(e.PDUJSON, "content.displayname"); dn.Type == gjson.String && strings.TrimSpace(dn.Str) != "" {
		n = dn.Str
	}
	g.setName(e.RoomID+"\x00"+*e.StateKey, n)
}

func (g *Gateway) setName(key, name string) {
	g.names.mu.Lock()
	if len(g.names.m) >= maxCachedNames {
		clear(g.names.m)
	}
	g.names.m[key] = name
	g.names.mu.Unlock()
}

func localpart(userID string) string {
	lp, _, _ := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	return lp
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of plain values
	}
	return b
}

// errMissingParam is 400 M_MISSING_PARAM (mautrix has no predefined value).
var errMissingParam = mautrix.RespError{ErrCode: "M_MISSING_PARAM", StatusCode: http.StatusBadRequest}
