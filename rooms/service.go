// Package rooms owns room events: building, hashing and signing them with
// gomatrixserverlib, checking them against the spec's auth rules, keeping each
// room's current state, persisting them to the single ordered event stream,
// history visibility, and waking /sync through the Notifier.
package rooms

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

// DefaultRoomVersion is used by createRoom when the client names none.
const DefaultRoomVersion = gomatrixserverlib.RoomVersionV10

// MaxEventSize is the spec's limit on a whole event in bytes.
const MaxEventSize = 65536

// Service is the room engine. One per server process.
type Service struct {
	db         *storage.DB
	serverName spec.ServerName
	key        *SigningKey
	notifier   *Notifier
	typing     *Typing
	log        *slog.Logger

	mu    sync.Mutex
	rooms map[string]*room
}

// New creates the room engine and seeds the notifier from the database.
func New(ctx context.Context, db *storage.DB, serverName string, key *SigningKey, log *slog.Logger) (*Service, error) {
	pos, err := db.CurrentPos(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading stream position: %w", err)
	}
	n := NewNotifier(pos)
	joins, err := db.AllJoinedMemberships(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading memberships: %w", err)
	}
	for _, m := range joins {
		n.SetJoined(m.RoomID, m.UserID, true)
	}
	return &Service{
		typing:     newTyping(db, n),
		db:         db,
		serverName: spec.ServerName(serverName),
		key:        key,
		notifier:   n,
		log:        log,
		rooms:      make(map[string]*room),
	}, nil
}

// Notifier returns the sync notifier.
func (s *Service) Notifier() *Notifier { return s.notifier }

// DB returns the database the engine writes to.
func (s *Service) DB() *storage.DB { return s.db }

// ServerName is the server's name.
func (s *Service) ServerName() string { return string(s.serverName) }

// room is the in-memory current state of one room. Its mutex serialises
// event creation in the room: prev_events, depth and the auth check all
// depend on the previous event.
type room struct {
	mu       sync.Mutex
	id       string
	version  gomatrixserverlib.IRoomVersion
	state    map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU
	latestID string
	depth    int64
	loaded   bool
	// headPos is the stream position of latestID. behind: another
	// instance stored events after it (cluster.go); the cached state is
	// brought forward with catchUp before its next use.
	headPos storage.StreamPos
	behind  bool

	// qmu guards queue: sends waiting to be committed with the next batch.
	qmu   sync.Mutex
	queue []*pendingSend

	// recent holds the room's newest events so /sync long-polls, which
	// mostly ask for "what came after my token", need no query.
	recent recentEvents
}

// recentCapacity is how many events per room are kept in memory.
const recentCapacity = 64

// recentEvents is a room's newest events, oldest first. It has its own lock
// because readers must not wait behind a send holding the room lock.
type recentEvents struct {
	mu     sync.RWMutex
	events []*storage.Event
	// start: every event of the room with pos > start is in events.
	start storage.StreamPos
}

func (re *recentEvents) reset(start storage.StreamPos) {
	re.mu.Lock()
	defer re.mu.Unlock()
	re.events = re.events[:0]
	re.start = start
}

func (re *recentEvents) append(e *storage.Event) {
	re.mu.Lock()
	defer re.mu.Unlock()
	if len(re.events) >= recentCapacity {
		re.start = re.events[0].Pos
		copy(re.events, re.events[1:])
		re.events = re.events[:len(re.events)-1]
	}
	re.events = append(re.events, e)
}

// replace swaps in a new version of an event (after a redaction).
func (re *recentEvents) replace(e *storage.Event) {
	re.mu.Lock()
	defer re.mu.Unlock()
	for i, old := range re.events {
		if old.EventID == e.EventID {
			re.events[i] = e
			return
		}
	}
}

// RecentEvents returns a room's events with after < pos <= upTo from
// memory, oldest first; ok is false when memory does not hold all of them
// (the caller then reads the database). upTo must not exceed
// Notifier().Latest(): only up to there is every committed event applied.
func (s *Service) RecentEvents(roomID string, after, upTo storage.StreamPos) ([]*storage.Event, bool) {
	if upTo > s.notifier.Latest() {
		return nil, false
	}
	s.mu.Lock()
	r := s.rooms[roomID]
	s.mu.Unlock()
	if r == nil {
		return nil, false
	}
	re := &r.recent
	re.mu.RLock()
	defer re.mu.RUnlock()
	if re.events == nil || after < re.start {
		return nil, false
	}
	var out []*storage.Event
	for _, e := range re.events {
		if e.Pos > after && e.Pos <= upTo {
			out = append(out, e)
		}
	}
	return out, true
}

// errRoomNotFound is what callers get for an unknown room.
var errRoomNotFound = mautrix.MNotFound.WithMessage("Room not found")

// getRoom returns the cached room, loading it on first use; M_NOT_FOUND if unknown.
// The returned room is locked; the caller must unlock it.
func (s *Service) lockRoom(ctx context.Context, roomID string) (*room, error) {
	r := s.roomEntry(roomID)
	r.mu.Lock()
	if r.loaded && !r.behind {
		return r, nil
	}
	if err := s.refreshRoom(ctx, r); err != nil {
		s.forgetUnloaded(r)
		r.mu.Unlock()
		return nil, err
	}
	return r, nil
}

// roomEntry returns the room's cache entry, creating an unloaded one.
func (s *Service) roomEntry(roomID string) *room {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rooms[roomID]
	if r == nil {
		r = &room{id: roomID}
		s.rooms[roomID] = r
	}
	return r
}

// forgetUnloaded drops an entry that failed to load (e.g. an unknown room
// id), so requests for made-up rooms do not grow the cache. r is locked.
func (s *Service) forgetUnloaded(r *room) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !r.loaded && s.rooms[r.id] == r {
		delete(s.rooms, r.id)
	}
}

func (s *Service) loadRoom(ctx context.Context, r *room) error {
	info, err := s.db.RoomByID(ctx, r.id)
	if errors.Is(err, storage.ErrNotFound) {
		return errRoomNotFound
	} else if err != nil {
		return fmt.Errorf("loading room %s: %w", r.id, err)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(info.RoomVersion))
	if err != nil {
		return fmt.Errorf("room %s: %w", r.id, err)
	}
	stateRows, err := s.db.CurrentState(ctx, r.id)
	if err != nil {
		return fmt.Errorf("loading state of %s: %w", r.id, err)
	}
	state := make(map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU, len(stateRows))
	for _, row := range stateRows {
		pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(row.EventID, row.PDUJSON, row.RedactedBy != nil)
		if err != nil {
			return fmt.Errorf("parsing state event %s: %w", row.EventID, err)
		}
		state[gomatrixserverlib.StateKeyTuple{EventType: row.Type, StateKey: *row.StateKey}] = pdu
	}
	latest, err := s.db.LatestRoomEvent(ctx, r.id)
	if err != nil {
		return fmt.Errorf("loading latest event of %s: %w", r.id, err)
	}
	r.version = verImpl
	r.state = state
	r.latestID = latest.EventID
	r.depth = latest.Depth
	r.headPos, r.behind = latest.Pos, false
	r.recent.reset(latest.Pos)
	if r.recent.events == nil {
		r.recent.events = make([]*storage.Event, 0, recentCapacity)
	}
	r.loaded = true
	return nil
}

// RoomVersion returns a room's version; M_NOT_FOUND if the room is unknown.
func (s *Service) RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.IRoomVersion, error) {
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return nil, err
	}
	defer r.mu.Unlock()
	return r.version, nil
}

// CurrentStateEvent returns one current state event of a room, or nil.
func (s *Service) CurrentStateEvent(ctx context.Context, roomID, eventType, stateKey string) (gomatrixserverlib.PDU, error) {
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return nil, err
	}
	defer r.mu.Unlock()
	return r.state[gomatrixserverlib.StateKeyTuple{EventType: eventType, StateKey: stateKey}], nil
}

// CurrentStateSnapshot returns a copy of a room's current state.
func (s *Service) CurrentStateSnapshot(ctx context.Context, roomID string) (map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU, error) {
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return nil, err
	}
	defer r.mu.Unlock()
	out := make(map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU, len(r.state))
	for k, v := range r.state {
		out[k] = v
	}
	return out, nil
}

// Membership returns a user's current membership of a room ("" if none).
func (s *Service) Membership(ctx context.Context, roomID, userID string) (string, error) {
	ev, err := s.CurrentStateEvent(ctx, roomID, spec.MRoomMember, userID)
	if err != nil || ev == nil {
		return "", err
	}
	m, _ := ev.Membership()
	return m, nil
}

// PowerLevels returns a room's effective power levels.
func (s *Service) PowerLevels(ctx context.Context, roomID string) (*gomatrixserverlib.PowerLevelContent, error) {
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return nil, err
	}
	defer r.mu.Unlock()
	return r.powerLevels(nil)
}

// UserPowerLevel returns a user's power in a room, counting v12 creators as infinitely powerful.
func (s *Service) UserPowerLevel(ctx context.Context, roomID, userID string) (int64, error) {
	r, err := s.lockRoom(ctx, roomID)
	if err != nil {
		return 0, err
	}
	defer r.mu.Unlock()
	return r.userLevel(nil, userID)
}

// stateProvider implements gomatrixserverlib.AuthEventProvider over a room's
// state plus the not-yet-committed events of the current batch.
type stateProvider struct {
	r       *room
	overlay map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU
}

func (p *stateProvider) get(t, k string) (gomatrixserverlib.PDU, error) {
	key := gomatrixserverlib.StateKeyTuple{EventType: t, StateKey: k}
	if ev, ok := p.overlay[key]; ok {
		return ev, nil
	}
	return p.r.state[key], nil
}
func (p *stateProvider) Create() (gomatrixserverlib.PDU, error) { return p.get(spec.MRoomCreate, "") }
func (p *stateProvider) JoinRules() (gomatrixserverlib.PDU, error) {
	return p.get(spec.MRoomJoinRules, "")
}
func (p *stateProvider) PowerLevels() (gomatrixserverlib.PDU, error) {
	return p.get(spec.MRoomPowerLevels, "")
}
func (p *stateProvider) Member(k spec.SenderID) (gomatrixserverlib.PDU, error) {
	return p.get(spec.MRoomMember, string(k))
}
func (p *stateProvider) ThirdPartyInvite(k string) (gomatrixserverlib.PDU, error) {
	return p.get(spec.MRoomThirdPartyInvite, k)
}
func (p *stateProvider) Valid() bool { return true }

func (r *room) powerLevels(overlay map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU) (*gomatrixserverlib.PowerLevelContent, error) {
	p := &stateProvider{r: r, overlay: overlay}
	create, _ := p.Create()
	creator := ""
	if create != nil {
		creator = string(create.SenderID())
	}
	pl, err := gomatrixserverlib.NewPowerLevelContentFromAuthEvents(p, creator)
	if err != nil {
		return nil, err
	}
	return &pl, nil
}

// userLevel is the user's power level; v12 creators rank above everyone.
func (r *room) userLevel(overlay map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU, userID string) (int64, error) {
	if r.version.PrivilegedCreators() && r.isCreator(overlay, userID) {
		return 1 << 53, nil
	}
	pl, err := r.powerLevels(overlay)
	if err != nil {
		return 0, err
	}
	return pl.UserLevel(spec.SenderID(userID)), nil
}

func (r *room) isCreator(overlay map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU, userID string) bool {
	p := &stateProvider{r: r, overlay: overlay}
	create, _ := p.Create()
	if create == nil {
		return false
	}
	if string(create.SenderID()) == userID {
		return true
	}
	var c struct {
		AdditionalCreators []string `json:"additional_creators"`
	}
	_ = jsonUnmarshal(create.Content(), &c)
	for _, u := range c.AdditionalCreators {
		if u == userID {
			return true
		}
	}
	return false
}
