package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

// User-interactive authentication
// (https://spec.matrix.org/v1.12/client-server-api/#user-interactive-authentication-api).
// A request without "auth" gets 401 with the flows and a new session; the
// client repeats the request with "auth": {type, session, ...} until every
// stage of one flow is complete.

// UIA stage types this server offers.
const (
	stageDummy    = "m.login.dummy"
	stagePassword = "m.login.password"
	// stageRegistrationToken is how people register while open
	// registration is off: with a token an admin created (adminapi).
	stageRegistrationToken = "m.login.registration_token"
)

const (
	uiaSessionLifetime = time.Hour
	// maxUIASessions bounds memory: registration starts sessions without a token.
	maxUIASessions = 10_000
)

// rawAuth is the "auth" member of a UIA-protected request body.
type rawAuth = json.RawMessage

// uiaSession is one UIA session, bound to the operation it authorises.
type uiaSession struct {
	id        string
	op        string // e.g. "register", "password", "delete_device:ABC"
	userID    string // the authenticated caller; "" for registration
	completed []string
	expires   time.Time

	// Registration remembers the request and the password's hash between
	// steps, so the client may send only "auth" after the first.
	regBody         json.RawMessage
	regPasswordHash string
}

// uiaStore keeps the sessions in memory (a restart asks clients to start again).
type uiaStore struct {
	mu       sync.Mutex
	sessions map[string]*uiaSession
}

func newUIAStore() *uiaStore { return &uiaStore{sessions: make(map[string]*uiaSession)} }

// create starts a session, evicting expired (then oldest) ones at the cap.
func (st *uiaStore) create(op, userID string, now time.Time) *uiaSession {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.sessions) >= maxUIASessions {
		for id, s := range st.sessions {
			if now.After(s.expires) {
				delete(st.sessions, id)
			}
		}
		var oldest *uiaSession
		for len(st.sessions) >= maxUIASessions {
			for _, s := range st.sessions {
				if oldest == nil || s.expires.Before(oldest.expires) {
					oldest = s
				}
			}
			delete(st.sessions, oldest.id)
			oldest = nil
		}
	}
	s := &uiaSession{id: storage.NewToken("")[:24], op: op, userID: userID, expires: now.Add(uiaSessionLifetime)}
	st.sessions[s.id] = s
	return s
}

// clone copies a session so callers can read it without the store's lock.
func (st *uiaSession) clone() *uiaSession {
	c := *st
	c.completed = slices.Clone(st.completed)
	return &c
}

// get returns a copy of a live session.
func (st *uiaStore) get(id string, now time.Time) (*uiaSession, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	s, ok := st.sessions[id]
	if !ok {
		return nil, false
	}
	if now.After(s.expires) {
		delete(st.sessions, id)
		return nil, false
	}
	return s.clone(), true
}

// complete marks a stage done and returns the session's completed stages.
func (st *uiaStore) complete(id, stage string) []string {
	st.mu.Lock()
	defer st.mu.Unlock()
	s, ok := st.sessions[id]
	if !ok {
		return []string{stage}
	}
	if !slices.Contains(s.completed, stage) {
		s.completed = append(s.completed, stage)
	}
	return slices.Clone(s.completed)
}

// update changes a live session under the lock.
func (st *uiaStore) update(id string, fn func(*uiaSession)) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if s, ok := st.sessions[id]; ok {
		fn(s)
	}
}

// finish ends a session once the operation it authorised has succeeded.
func (st *uiaStore) finish(id string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.sessions, id)
}

// uiaRequest describes what a UIA-protected request wants.
type uiaRequest struct {
	op     string
	userID string
	flows  [][]string
	auth   rawAuth
}

// uiaAuthDict is the auth object a client submits for one stage.
type uiaAuthDict struct {
	Type       string          `json:"type"`
	Session    string          `json:"session"`
	Identifier *userIdentifier `json:"identifier"`
	User       string          `json:"user"` // legacy form of identifier
	Password   string          `json:"password"`
	Token      string          `json:"token"` // m.login.registration_token
}

// userIdentifier is the spec's identifier object (only m.id.user is
// supported: no third-party identifiers are stored).
type userIdentifier struct {
	Type string `json:"type"`
	User string `json:"user"`
}

// uiaChallenge is the 401 telling the client what is left to do.
type uiaChallenge struct {
	session   string
	flows     [][]string
	completed []string
	errcode   string // set when the stage just attempted failed
	err       string
}

func (ch *uiaChallenge) write(w http.ResponseWriter) error {
	flows := make([]map[string][]string, len(ch.flows))
	for i, f := range ch.flows {
		flows[i] = map[string][]string{"stages": f}
	}
	body := map[string]any{"flows": flows, "params": map[string]any{}, "session": ch.session}
	if len(ch.completed) > 0 {
		body["completed"] = ch.completed
	}
	if ch.errcode != "" {
		body["errcode"], body["error"] = ch.errcode, ch.err
	}
	return writeJSON(w, http.StatusUnauthorized, body)
}

// userInteractiveAuth runs one step of UIA. It returns the session when a
// flow is complete, or else the challenge for the caller to write (after
// keeping whatever it wants in the session), or an error.
func (a *API) userInteractiveAuth(r *http.Request, req uiaRequest) (*uiaSession, *uiaChallenge, error) {
	now := time.Now()
	store := a.accounts.uia
	challenge := func(s *uiaSession, completed []string) *uiaChallenge {
		return &uiaChallenge{session: s.id, flows: req.flows, completed: completed}
	}
	if len(bytes.TrimSpace(req.auth)) == 0 || string(bytes.TrimSpace(req.auth)) == "null" {
		return nil, challenge(store.create(req.op, req.userID, now), nil), nil
	}
	var auth uiaAuthDict
	if err := decodeJSONBytes(req.auth, &auth); err != nil {
		return nil, nil, err
	}
	var sess *uiaSession
	if auth.Session == "" {
		sess = store.create(req.op, req.userID, now)
	} else {
		var ok bool
		if sess, ok = store.get(auth.Session, now); !ok {
			return nil, nil, mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("Unknown session ID: %s", auth.Session)
		}
		if sess.op != req.op || sess.userID != req.userID {
			return nil, nil, mautrix.MForbidden.WithMessage("Requested operation has changed during the UI authentication session.")
		}
	}
	if auth.Type == "" {
		return nil, challenge(sess, sess.completed), nil
	}
	if !slices.ContainsFunc(req.flows, func(f []string) bool { return slices.Contains(f, auth.Type) }) {
		return nil, nil, mautrix.MUnrecognized.WithStatus(http.StatusBadRequest).WithMessage("Unrecognised auth type %q", auth.Type)
	}
	var stageErr error
	switch auth.Type {
	case stageDummy:
	case stagePassword:
		stageErr = a.checkUIAPassword(r, req.userID, auth)
	case stageRegistrationToken:
		stageErr = a.reserveRegistrationToken(r, sess, auth.Token)
	}
	if stageErr != nil {
		var re mautrix.RespError
		if !errors.As(stageErr, &re) || re.StatusCode >= 500 {
			return nil, nil, stageErr // an internal error is not the client's fault
		}
		ch := challenge(sess, sess.completed)
		ch.errcode, ch.err = re.ErrCode, re.Err
		return nil, ch, nil
	}
	completed := store.complete(sess.id, auth.Type)
	for _, flow := range req.flows {
		if !slices.ContainsFunc(flow, func(st string) bool { return !slices.Contains(completed, st) }) {
			sess.completed = completed
			return sess, nil, nil
		}
	}
	return nil, challenge(sess, completed), nil
}

// requireUIA is userInteractiveAuth for endpoints that keep nothing in the
// session: done=false means the challenge has been written.
func (a *API) requireUIA(w http.ResponseWriter, r *http.Request, req uiaRequest) (sess *uiaSession, done bool, err error) {
	sess, ch, err := a.userInteractiveAuth(r, req)
	if err != nil {
		return nil, false, err
	}
	if ch != nil {
		return nil, false, ch.write(w)
	}
	return sess, true, nil
}

// checkUIAPassword verifies an m.login.password stage for the caller.
func (a *API) checkUIAPassword(r *http.Request, userID string, auth uiaAuthDict) error {
	who := auth.User
	if auth.Identifier != nil {
		if auth.Identifier.Type != "m.id.user" {
			return mautrix.MForbidden.WithMessage("Unsupported identifier type %q", auth.Identifier.Type)
		}
		who = auth.Identifier.User
	}
	if who != "" && a.qualifyUserID(who) != userID {
		return mautrix.MForbidden.WithMessage("Invalid auth: not the logged-in user")
	}
	u, err := a.db.UserByID(r.Context(), userID)
	if err != nil {
		return fmt.Errorf("loading %s: %w", userID, err)
	}
	if !a.checkPassword(u.PasswordHash, auth.Password) {
		return mautrix.MForbidden.WithMessage("Invalid password")
	}
	return nil
}

// Registration tokens (https://spec.matrix.org/v1.12/client-server-api/#token-authenticated-registration).
// Admins create them through the admin API. With open registration on,
// /register asks for m.login.dummy as before; with it off, and at least one
// token existing, it asks for m.login.registration_token instead.

// registrationFlowsFor returns the flows /register offers now, or the
// error refusing registration altogether.
func (a *API) registrationFlowsFor(ctx context.Context) ([][]string, error) {
	if a.cfg.Registration.Enabled {
		return registrationFlows, nil
	}
	has, err := a.db.HasRegistrationTokens(ctx)
	if err != nil {
		return nil, err
	}
	if has {
		return [][]string{{stageRegistrationToken, stageDummy}}, nil // Synapse's flow with registration_requires_token
	}
	return nil, mautrix.MForbidden.WithMessage("Registration has been disabled")
}

var errInvalidRegistrationToken = mautrix.RespError{ErrCode: "M_UNAUTHORIZED", StatusCode: http.StatusUnauthorized, Err: "Invalid registration token"}

// reserveRegistrationToken checks an m.login.registration_token stage: the
// token must exist, not be expired and have a use left; one use is then
// held for this UIA session until it succeeds (completeRegistrationToken)
// or expires.
func (a *API) reserveRegistrationToken(r *http.Request, sess *uiaSession, token string) error {
	if sess.op != "register" {
		return mautrix.MForbidden.WithMessage("Registration tokens are for registration only")
	}
	if token == "" {
		return missingParam("Missing registration token")
	}
	now := time.Now()
	ok, err := a.db.ReserveRegistrationToken(r.Context(), sess.id, token, now.UnixMilli(), sess.expires.UnixMilli())
	if err != nil {
		return fmt.Errorf("reserving registration token: %w", err)
	}
	if !ok {
		return errInvalidRegistrationToken
	}
	return nil
}

// completeRegistrationToken counts the registration of a UIA session as a
// completed use of the token it reserved (nothing when it used none).
func (a *API) completeRegistrationToken(ctx context.Context, sessionID string) {
	if err := a.db.CompleteRegistrationToken(context.WithoutCancel(ctx), sessionID); err != nil {
		a.log.ErrorContext(ctx, "recording registration token use failed", "err", err)
	}
}

// registerRegistrationTokenRoutes registers the token validity check.
func (a *API) registerRegistrationTokenRoutes(rt routes) {
	rt.v1("/register/m.login.registration_token/validity", a.public(a.rateLimited(a.registrationTokenValidity)), http.MethodGet)
}

// registrationTokenValidity is GET /_matrix/client/v1/register/m.login.registration_token/validity.
func (a *API) registrationTokenValidity(w http.ResponseWriter, r *http.Request) error {
	if _, err := a.registrationFlowsFor(r.Context()); err != nil {
		return err
	}
	token := r.URL.Query().Get("token")
	if token == "" {
		return missingParam("Missing string query parameter 'token'")
	}
	t, err := a.db.RegistrationTokenByName(r.Context(), token, time.Now().UnixMilli())
	if errors.Is(err, storage.ErrNotFound) {
		return writeJSON(w, http.StatusOK, map[string]bool{"valid": false})
	} else if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]bool{"valid": t.Valid(time.Now().UnixMilli())})
}
