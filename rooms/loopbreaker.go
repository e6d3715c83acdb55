package rooms

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

// The loop breaker stops agents that answer each other for ever. Per room
// it allows at most MaxConsecutive bot messages in a row with no human
// message in between, and at most MaxPerMinute bot messages in any minute.
// When either budget is spent, further bot messages get 429
// M_LIMIT_EXCEEDED with retry_after_ms, the room gets one m.notice that
// explains the pause, and a human message (or Reset, the admin command)
// resumes the bots. A per-minute pause also ends by itself once the minute
// has passed.
//
// Settings are stored per room in the room_loop_breakers table; a room
// without a row follows the server's defaults (agents.loop_breaker in the
// configuration: off for ordinary rooms, on for observer rooms, which get
// a row when they are created). The counters are in memory only: the check
// sits on the send path and costs one map lookup and a mutex; a restart
// forgets a pause (the bots then get a fresh budget).

// LoopBreakerSettings is a room's loop-breaker budget. A limit of 0 means
// no limit for that dimension.
type LoopBreakerSettings struct {
	Enabled        bool `json:"enabled"`
	MaxConsecutive int  `json:"max_consecutive"`
	MaxPerMinute   int  `json:"max_per_minute"`
}

// LoopBreakerOptions configures a LoopBreaker.
type LoopBreakerOptions struct {
	// Defaults is the budget of a room without settings of its own
	// (Enabled: agents.loop_breaker.other_rooms).
	Defaults LoopBreakerSettings
	// ObserverRooms is what CreateObserverRoom stores for a new observer
	// room (Enabled: agents.loop_breaker.observer_rooms).
	ObserverRooms LoopBreakerSettings
	// NoticeSender returns the user that posts the pause notice (the
	// built-in agents appservice's sender); "" or a user who is not joined
	// to the room means no notice.
	NoticeSender func() string
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// LoopBreakerStatus is a room's settings and counters (admin API).
type LoopBreakerStatus struct {
	LoopBreakerSettings
	// Custom is true when the room has settings of its own.
	Custom bool `json:"custom"`
	// Consecutive counts bot messages since the last human message.
	Consecutive int `json:"consecutive_bot_messages"`
	// LastMinute counts bot messages in the last 60 s.
	LastMinute int `json:"bot_messages_last_minute"`
	// Paused is "", "consecutive" or "per_minute".
	Paused string `json:"paused,omitempty"`
}

// Pause reasons.
const (
	pausedConsecutive = "consecutive"
	pausedPerMinute   = "per_minute"
)

// consecutivePauseRetry is the retry_after_ms hint of a pause that only a
// human (or an admin) ends.
const consecutivePauseRetry = 30 * time.Second

// LoopBreaker keeps each room's bot-message budget. Use one per Service.
type LoopBreaker struct {
	s    *Service
	opts LoopBreakerOptions

	mu    sync.RWMutex
	rooms map[string]*loopRoom
}

// loopRoom is one room's settings and counters.
type loopRoom struct {
	mu          sync.Mutex
	settings    LoopBreakerSettings
	custom      bool
	consecutive int
	recent      []int64 // unix ms of admitted bot messages in the last minute, oldest first
	paused      string
	noticeSent  bool
}

// loopBreakers finds the LoopBreaker of a Service (CreateObserverRoom
// stores the observer defaults through it).
var loopBreakers sync.Map // *Service → *LoopBreaker

// NewLoopBreaker creates the loop breaker of s.
func NewLoopBreaker(s *Service, opts LoopBreakerOptions) *LoopBreaker {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.NoticeSender == nil {
		opts.NoticeSender = func() string { return "" }
	}
	lb := &LoopBreaker{s: s, opts: opts, rooms: make(map[string]*loopRoom)}
	loopBreakers.Store(s, lb)
	return lb
}

// loopBreakerOf returns the LoopBreaker created for s, or nil.
func loopBreakerOf(s *Service) *LoopBreaker {
	v, _ := loopBreakers.Load(s)
	lb, _ := v.(*LoopBreaker)
	return lb
}

// CountsAsMessage reports whether an event type uses the budget: messages,
// encrypted messages and stickers (not reactions, redactions or state).
func CountsAsMessage(eventType string) bool {
	return eventType == "m.room.message" || eventType == "m.room.encrypted" || eventType == "m.sticker"
}

// Admit is called before a message is sent. For a bot it checks the
// room's budget: over it, the answer is 429 M_LIMIT_EXCEEDED (and the room
// gets its one notice); within it, the message is counted. The returned
// function must be called with whether the send succeeded: a failed send
// gives its budget back, and a human's successful message resets the
// room. It is nil when there is nothing to do afterwards.
func (lb *LoopBreaker) Admit(ctx context.Context, roomID, eventType string, bot bool) (func(sent bool), error) {
	if lb == nil || !CountsAsMessage(eventType) {
		return nil, nil
	}
	if !bot {
		// Only a room with counters needs resetting; never load one for it.
		lb.mu.RLock()
		lr := lb.rooms[roomID]
		lb.mu.RUnlock()
		if lr == nil {
			return nil, nil
		}
		return func(sent bool) {
			if sent {
				lr.reset()
			}
		}, nil
	}
	lr, err := lb.room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	now := lb.opts.Now().UnixMilli()
	lr.mu.Lock()
	if !lr.settings.Enabled {
		lr.mu.Unlock()
		return nil, nil
	}
	lr.prune(now)
	st := lr.settings
	var retry time.Duration
	switch {
	case lr.paused == pausedConsecutive:
		retry = consecutivePauseRetry
	case st.MaxConsecutive > 0 && lr.consecutive >= st.MaxConsecutive:
		lr.paused, retry = pausedConsecutive, consecutivePauseRetry
	case st.MaxPerMinute > 0 && len(lr.recent) >= st.MaxPerMinute:
		lr.paused = pausedPerMinute
		retry = time.Duration(lr.recent[0]+60_000-now) * time.Millisecond
	default:
		if lr.paused != "" { // a per-minute pause has run out
			lr.paused, lr.noticeSent = "", false
		}
		lr.consecutive++
		lr.recent = append(lr.recent, now)
		lr.mu.Unlock()
		return func(sent bool) {
			if !sent {
				lr.giveBack(now)
				lb.forgetIfIdle(roomID, lr)
			}
		}, nil
	}
	reason := lr.paused
	notify := !lr.noticeSent
	lr.noticeSent = true
	lr.mu.Unlock()
	if notify {
		lb.postNotice(ctx, roomID, reason, st, retry)
	}
	secs := int64((retry + time.Second - 1) / time.Second)
	return nil, mautrix.MLimitExceeded.WithMessage("The loop breaker paused bots in this room: %s", pauseText(reason, st)).
		WithExtraField("retry_after_ms", max(retry.Milliseconds(), 1)).
		WithExtraHeader("Retry-After", strconv.FormatInt(max(secs, 1), 10))
}

// prune drops timestamps older than a minute. lr.mu is held.
func (lr *loopRoom) prune(now int64) {
	i := 0
	for i < len(lr.recent) && lr.recent[i] <= now-60_000 {
		i++
	}
	if i > 0 {
		lr.recent = append(lr.recent[:0], lr.recent[i:]...)
	}
}

// giveBack undoes the counting of a message that was not sent.
func (lr *loopRoom) giveBack(ts int64) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	if lr.consecutive > 0 {
		lr.consecutive--
	}
	for i := len(lr.recent) - 1; i >= 0; i-- {
		if lr.recent[i] == ts {
			lr.recent = append(lr.recent[:i], lr.recent[i+1:]...)
			break
		}
	}
}

// reset starts a fresh budget (a human spoke, or an admin said so).
func (lr *loopRoom) reset() {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	lr.consecutive, lr.recent, lr.paused, lr.noticeSent = 0, lr.recent[:0], "", false
}

func pauseText(reason string, st LoopBreakerSettings) string {
	if reason == pausedPerMinute {
		return fmt.Sprintf("agents sent %d messages within one minute", st.MaxPerMinute)
	}
	return fmt.Sprintf("agents sent %d messages in a row with no human message in between", st.MaxConsecutive)
}

// postNotice tells the room why its bots stopped.
func (lb *LoopBreaker) postNotice(ctx context.Context, roomID, reason string, st LoopBreakerSettings, retry time.Duration) {
	sender := lb.opts.NoticeSender()
	if sender == "" {
		return
	}
	ctx = context.WithoutCancel(ctx)
	if m, err := lb.s.Membership(ctx, roomID, sender); err != nil || m != spec.Join {
		return
	}
	body := "⏸ Loop breaker: " + pauseText(reason, st) + ", so they are paused in this room. "
	if reason == pausedPerMinute {
		body += fmt.Sprintf("They may go on in %d s; a message from a person resumes them at once.", int64((retry+time.Second-1)/time.Second))
	} else {
		body += "A message from a person resumes them (or an admin: agentspace rooms loop-breaker ROOM --reset)."
	}
	content := mustJSON(map[string]any{
		"msgtype": "m.notice",
		"body":    body,
		"org.agentspace.loop_breaker": map[string]any{
			"reason": reason, "max_consecutive": st.MaxConsecutive, "max_per_minute": st.MaxPerMinute,
			"retry_after_ms": retry.Milliseconds(),
		},
	})
	if _, err := lb.s.Send(ctx, roomID, EventRequest{Sender: sender, Type: "m.room.message", Content: content}); err != nil {
		lb.s.log.WarnContext(ctx, "posting the loop breaker notice", "room_id", roomID, "err", err)
	}
}

// room returns a room's entry, loading its settings on first use.
func (lb *LoopBreaker) room(ctx context.Context, roomID string) (*loopRoom, error) {
	lb.mu.RLock()
	lr := lb.rooms[roomID]
	lb.mu.RUnlock()
	if lr != nil {
		return lr, nil
	}
	settings, custom, err := lb.loadSettings(ctx, roomID)
	if err != nil {
		return nil, err
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if lr = lb.rooms[roomID]; lr == nil {
		lr = &loopRoom{settings: settings, custom: custom}
		lb.rooms[roomID] = lr
	}
	return lr, nil
}

func (lb *LoopBreaker) loadSettings(ctx context.Context, roomID string) (LoopBreakerSettings, bool, error) {
	row, err := lb.s.db.LoopBreakerSettings(ctx, roomID)
	if errors.Is(err, storage.ErrNotFound) {
		return lb.opts.Defaults, false, nil
	} else if err != nil {
		return LoopBreakerSettings{}, false, fmt.Errorf("loading loop breaker settings of %s: %w", roomID, err)
	}
	return LoopBreakerSettings{Enabled: row.Enabled, MaxConsecutive: row.MaxConsecutive, MaxPerMinute: row.MaxPerMinute}, true, nil
}

// forgetIfIdle drops an entry that holds nothing worth keeping (a send to
// an unknown room id must not grow the map).
func (lb *LoopBreaker) forgetIfIdle(roomID string, lr *loopRoom) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lr.mu.Lock()
	idle := !lr.custom && lr.consecutive == 0 && len(lr.recent) == 0 && lr.paused == ""
	lr.mu.Unlock()
	if idle && lb.rooms[roomID] == lr {
		delete(lb.rooms, roomID)
	}
}

// Status returns a room's settings and counters.
func (lb *LoopBreaker) Status(ctx context.Context, roomID string) (LoopBreakerStatus, error) {
	lr, err := lb.room(ctx, roomID)
	if err != nil {
		return LoopBreakerStatus{}, err
	}
	lr.mu.Lock()
	defer lr.mu.Unlock()
	lr.prune(lb.opts.Now().UnixMilli())
	return LoopBreakerStatus{LoopBreakerSettings: lr.settings, Custom: lr.custom, Consecutive: lr.consecutive,
		LastMinute: len(lr.recent), Paused: lr.paused}, nil
}

// Set stores a room's own settings. Turning the breaker off, or changing
// a limit, also lifts a pause.
func (lb *LoopBreaker) Set(ctx context.Context, roomID string, st LoopBreakerSettings) error {
	if st.MaxConsecutive < 0 || st.MaxPerMinute < 0 {
		return mautrix.MInvalidParam.WithMessage("limits must be 0 (no limit) or more")
	}
	if err := lb.s.db.SetLoopBreakerSettings(ctx, storage.LoopBreakerRow{RoomID: roomID, Enabled: st.Enabled,
		MaxConsecutive: st.MaxConsecutive, MaxPerMinute: st.MaxPerMinute}); err != nil {
		return err
	}
	lr, err := lb.room(ctx, roomID)
	if err != nil {
		return err
	}
	lr.mu.Lock()
	lr.settings, lr.custom = st, true
	lr.paused, lr.noticeSent = "", false
	lr.mu.Unlock()
	return nil
}

// Reset gives a room a fresh budget and lifts its pause (the admin command).
func (lb *LoopBreaker) Reset(ctx context.Context, roomID string) error {
	lr, err := lb.room(ctx, roomID)
	if err != nil {
		return err
	}
	lr.reset()
	return nil
}
