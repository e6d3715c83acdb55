package clientapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/agentspace/agentspace/appservice"
	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// loadAppservices loads the configured appservice registrations and the
// built-in agents appservice (created next to the database on first
// start). A configured registration whose exclusive namespace overlaps the
// built-in one wins: the built-in appservice is then left out, with a
// warning, so existing set-ups that register their own @agent_.* bots
// keep working.
func loadAppservices(cfg *config.Config, log *slog.Logger) (*appservice.Registry, error) {
	regs := make([]*appservice.Registration, 0, len(cfg.AppServiceConfigFiles)+1)
	for _, p := range cfg.AppServiceConfigFiles {
		r, err := appservice.LoadFile(p)
		if err != nil {
			return nil, err
		}
		regs = append(regs, r)
	}
	builtin, err := appservice.LoadOrCreateBuiltin(cfg)
	if err != nil {
		return nil, err
	}
	if conflict := appservice.ConflictsWith(builtin, regs); conflict != nil {
		log.Warn("the built-in agents appservice is not loaded: a configured appservice conflicts with it; "+
			"use that appservice's registration with agentspace openclaw link --registration",
			"file", builtin.Path, "conflict", conflict.Error())
	} else {
		regs = append(regs, builtin)
	}
	return appservice.NewRegistry(regs)
}

// agentsState is what the OpenClaw integration adds to the API: the loop
// breaker on the send path and a cache of who is a bot.
type agentsState struct {
	loopBreaker *rooms.LoopBreaker
	bots        botCache
}

// newAgentsState builds the loop breaker from the configuration. The
// notice sender is looked up when needed: the appservices are attached to
// the API after it is built.
func newAgentsState(a *API) *agentsState {
	lbc := a.cfg.Agents.LoopBreaker
	budget := rooms.LoopBreakerSettings{MaxConsecutive: lbc.MaxConsecutive, MaxPerMinute: lbc.MaxPerMinute}
	defaults, observer := budget, budget
	defaults.Enabled, observer.Enabled = lbc.OtherRooms, lbc.ObserverRooms
	return &agentsState{
		loopBreaker: rooms.NewLoopBreaker(a.rooms, rooms.LoopBreakerOptions{
			Defaults: defaults, ObserverRooms: observer, NoticeSender: a.agentsSender,
		}),
		bots: botCache{users: map[string]bool{}},
	}
}

// builtinAgents is the built-in agents appservice, or nil when it is not
// loaded (see loadAppservices).
func (a *API) builtinAgents() *appservice.Registration {
	return a.registry().ByID(appservice.BuiltinID)
}

// agentsSender is the built-in appservice's own user ("" if not loaded):
// it creates observer rooms and posts the loop breaker's notices.
func (a *API) agentsSender() string {
	if reg := a.builtinAgents(); reg != nil {
		return reg.SenderID(a.cfg.ServerName)
	}
	return ""
}

// sendMessage is rooms.Send behind the loop breaker: messages of bots
// (appservice users and users with user_type "bot") use the room's budget,
// messages of people reset it. Other event types go straight through.
func (a *API) sendMessage(ctx context.Context, s *Session, roomID string, req rooms.EventRequest) (*storage.Event, error) {
	if a.agents == nil || !rooms.CountsAsMessage(req.Type) {
		return a.rooms.Send(ctx, roomID, req)
	}
	bot, err := a.isBot(ctx, s)
	if err != nil {
		return nil, err
	}
	done, err := a.agents.loopBreaker.Admit(ctx, roomID, req.Type, bot)
	if err != nil {
		return nil, err
	}
	ev, err := a.rooms.Send(ctx, roomID, req)
	if done != nil {
		done(err == nil)
	}
	return ev, err
}

// botCache remembers which users are bots. Entries are dropped whenever
// the database's auth generation moves (any change to users or tokens),
// so a changed user_type is seen on the next send.
type botCache struct {
	mu    sync.Mutex
	gen   uint64
	users map[string]bool
}

// isBot reports whether the session's user is a bot: an appservice user
// (or the appservice itself), or a user whose user_type is "bot".
func (a *API) isBot(ctx context.Context, s *Session) (bool, error) {
	if s.AppserviceID != "" {
		return true, nil
	}
	c := &a.agents.bots
	gen := a.db.AuthGeneration()
	c.mu.Lock()
	if c.gen != gen {
		c.gen, c.users = gen, map[string]bool{}
	}
	bot, ok := c.users[s.UserID]
	c.mu.Unlock()
	if ok {
		return bot, nil
	}
	u, err := a.db.UserByID(ctx, s.UserID)
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	bot = (u.UserType != nil && *u.UserType == userTypeBot) || u.AppserviceID != nil
	c.mu.Lock()
	if c.gen == gen && len(c.users) < 100_000 {
		c.users[s.UserID] = bot
	}
	c.mu.Unlock()
	return bot, nil
}

// ensureAgentUser makes sure a bot user of the built-in appservice exists
// (created without a device or token, with displayName), the way
// POST /register with m.login.application_service would create it.
func (a *API) ensureAgentUser(ctx context.Context, userID, localpart, displayName string) error {
	reg := a.builtinAgents()
	if reg == nil || !reg.IsInterestedInUser(userID) {
		return fmt.Errorf("%s is not in the built-in agents namespace", userID)
	}
	_, err := a.db.UserByID(ctx, userID)
	if err == nil || !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	bot, id := userTypeBot, reg.ID
	err = a.db.Write(ctx, func(tx *storage.Tx) error {
		return tx.InsertUser(ctx, &storage.User{UserID: userID, Localpart: localpart, CreatedTS: time.Now().UnixMilli(),
			UserType: &bot, AppserviceID: &id, DisplayName: &displayName})
	})
	if errors.Is(err, storage.ErrAlreadyExists) {
		return nil // created concurrently
	}
	return err
}

// nameAgentsSender gives the built-in appservice's sender a readable
// display name the first time (it is created with its localpart).
func nameAgentsSender(ctx context.Context, cfg *config.Config, db *storage.DB, registry *appservice.Registry) error {
	reg := registry.ByID(appservice.BuiltinID)
	if reg == nil {
		return nil
	}
	u, err := db.UserByID(ctx, reg.SenderID(cfg.ServerName))
	if err != nil {
		return err
	}
	if u.DisplayName != nil && *u.DisplayName != reg.SenderLocalpart {
		return nil
	}
	name := "AgentSpace"
	return db.Write(ctx, func(tx *storage.Tx) error { return tx.SetProfile(ctx, u.UserID, &name, u.AvatarURL) })
}

// prepareAgentsAppservices runs the appservice start-up checks and names
// the built-in appservice's sender.
func prepareAgentsAppservices(ctx context.Context, cfg *config.Config, db *storage.DB, registry *appservice.Registry) error {
	if err := prepareAppservices(ctx, cfg, db, registry); err != nil {
		return err
	}
	return nameAgentsSender(ctx, cfg, db, registry)
}
