package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/appservice"
	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/storage"
)

// userTypeBot marks users that belong to an appservice namespace.
const userTypeBot = "bot"

// appserviceDelivery maps the configuration onto delivery settings.
func appserviceDelivery(cfg *config.Config) appservice.DeliveryConfig {
	d := appservice.DefaultDeliveryConfig()
	d.MinBackoff = cfg.AppServiceRetry.Min.Duration
	d.MaxBackoff = cfg.AppServiceRetry.Max.Duration
	return d
}

// prepareAppservices finishes start-up checks that need the database (an
// as_token must not also be a user's access token) and makes sure every
// appservice's sender user exists.
func prepareAppservices(ctx context.Context, cfg *config.Config, db *storage.DB, registry *appservice.Registry) error {
	for _, reg := range registry.List() {
		clash, err := db.AccessTokenExists(ctx, storage.HashToken(reg.AppToken))
		if err != nil {
			return fmt.Errorf("checking appservice %s: %w", reg.ID, err)
		}
		if clash {
			return fmt.Errorf("appservice registration %s: as_token: this token is already a user's access token; generate a fresh one", reg.Path)
		}
		senderID := reg.SenderID(cfg.ServerName)
		if len(senderID) > maxUserIDLength {
			return fmt.Errorf("appservice registration %s: sender_localpart: user id %s is longer than %d bytes", reg.Path, senderID, maxUserIDLength)
		}
		u, err := db.UserByID(ctx, senderID)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			id, bot, name := reg.ID, userTypeBot, reg.SenderLocalpart
			err = db.Write(ctx, func(tx *storage.Tx) error {
				return tx.InsertUser(ctx, &storage.User{
					UserID: senderID, Localpart: reg.SenderLocalpart, CreatedTS: time.Now().UnixMilli(),
					UserType: &bot, AppserviceID: &id, DisplayName: &name,
				})
			})
			if err != nil {
				return fmt.Errorf("creating sender %s of appservice %s: %w", senderID, reg.ID, err)
			}
		case err != nil:
			return fmt.Errorf("checking sender of appservice %s: %w", reg.ID, err)
		case u.AppserviceID == nil || *u.AppserviceID != reg.ID:
			// An existing ordinary account: the appservice now speaks for it.
			if err := db.SetUserAppservice(ctx, senderID, reg.ID, userTypeBot); err != nil {
				return fmt.Errorf("claiming sender %s for appservice %s: %w", senderID, reg.ID, err)
			}
		}
	}
	return nil
}

// registry is the set of loaded appservice registrations (never nil to call).
func (a *API) registry() *appservice.Registry {
	if a.appservices == nil {
		return nil
	}
	return a.appservices.Registry()
}

// authenticateAppservice resolves a request made with an appservice's
// as_token: it acts as its sender, or as ?user_id= (any user in its user
// namespaces that exists; M_FORBIDDEN otherwise).
func (a *API) authenticateAppservice(r *http.Request, reg *appservice.Registration, hash string) (*Session, error) {
	q := r.URL.Query()
	userID := q.Get("user_id")
	sender := reg.SenderID(a.cfg.ServerName)
	if userID == "" {
		userID = sender
	}
	deviceID := q.Get("device_id")
	if deviceID == "" {
		deviceID = q.Get("org.matrix.msc3202.device_id")
	}
	cacheKey := hash + "\x00" + userID + "\x00" + deviceID
	gen := a.db.AuthGeneration()
	if s, _, ok := a.sessions.get(cacheKey, gen); ok {
		return s, nil
	}
	if userID != sender && !reg.IsInterestedInUser(userID) {
		return nil, mautrix.MForbidden.WithMessage("Application service cannot masquerade as this user (%s).", userID)
	}
	u, err := a.db.UserByID(r.Context(), userID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mautrix.MForbidden.WithMessage("Application service has not registered this user (%s)", userID)
	} else if err != nil {
		return nil, err
	}
	if u.Deactivated {
		return nil, mautrix.MUserDeactivated.WithStatus(http.StatusForbidden).WithMessage("This account has been deactivated")
	}
	if deviceID != "" {
		if _, err := a.db.DeviceByID(r.Context(), userID, deviceID); errors.Is(err, storage.ErrNotFound) {
			return nil, mautrix.MForbidden.WithMessage("Application service has not registered device %s for this user", deviceID)
		} else if err != nil {
			return nil, err
		}
	}
	s := &Session{
		UserID: userID, DeviceID: deviceID, AppserviceID: reg.ID, AppserviceToken: true,
		IsAdmin: u.IsAdmin || a.cfg.IsAdminLocalpart(u.Localpart), TokenHash: hash,
	}
	a.sessions.put(cacheKey, s, 0, gen)
	return s, nil
}

// rateLimitExempt reports whether a session belongs to an appservice whose
// registration says rate_limited: false.
func (a *API) rateLimitExempt(s *Session) bool {
	if s.AppserviceID == "" {
		return false
	}
	reg := a.registry().ByID(s.AppserviceID)
	return reg != nil && !reg.RateLimited()
}

var errExclusiveUser = mautrix.MExclusive.WithMessage("This user ID is reserved by an application service.")

// checkUserNamespace refuses an ordinary (non-appservice) claim of a user id
// in an appservice's exclusive namespace.
func (a *API) checkUserNamespace(userID string) error {
	if a.registry().UserOwner(userID) != nil {
		return errExclusiveUser
	}
	return nil
}

// checkAliasNamespace refuses creating an alias reserved by an appservice
// other than the caller's.
func (a *API) checkAliasNamespace(s *Session, alias string) error {
	owner := a.registry().AliasOwner(alias)
	if owner != nil && (s == nil || s.AppserviceID != owner.ID) {
		return mautrix.MExclusive.WithMessage("This room alias is reserved by an application service.")
	}
	return nil
}

// registerAppservice handles POST /register with type
// m.login.application_service: an appservice creates a user in its
// namespace, authenticated by its as_token.
func (a *API) registerAppservice(w http.ResponseWriter, r *http.Request, req *registerRequest) error {
	token, present := tokenFromRequest(r)
	if !present {
		return mautrix.MMissingToken.WithMessage("Appservice token must be provided when using a type of m.login.application_service")
	}
	reg := a.registry().ByToken(token)
	if reg == nil {
		return errUnknownToken.WithMessage("Unknown appservice token")
	}
	if req.Username == nil || *req.Username == "" {
		return missingParam("Missing param: username")
	}
	localpart := strings.ToLower(strings.TrimPrefix(*req.Username, "@"))
	if l, server, ok := strings.Cut(localpart, ":"); ok {
		if server != strings.ToLower(a.cfg.ServerName) {
			return mautrix.MInvalidUsername.WithMessage("User ID must be on this server")
		}
		localpart = l
	}
	if err := validateLocalpart(localpart, a.cfg.ServerName); err != nil {
		return err
	}
	userID := "@" + localpart + ":" + a.cfg.ServerName
	if !reg.IsInterestedInUser(userID) && userID != reg.SenderID(a.cfg.ServerName) {
		return mautrix.MExclusive.WithMessage("Invalid user localpart for this application service.")
	}
	if owner := a.registry().UserOwner(userID); owner != nil && owner.ID != reg.ID {
		return mautrix.MExclusive.WithMessage("This user ID is reserved by another application service.")
	}
	var login *loginParams
	if !req.InhibitLogin {
		var err error
		if login, err = newLoginParams(req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken); err != nil {
			return err
		}
	}
	bot, id := userTypeBot, reg.ID
	resp, err := a.createAccount(r, newAccount{Localpart: localpart, UserType: &bot, AppserviceID: &id, Login: login})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, resp)
}

// loginAppservice handles POST /login with m.login.application_service: a
// fresh access token and device for a user in the appservice's namespace
// (how an agent process gets a token of its own).
func (a *API) loginAppservice(w http.ResponseWriter, r *http.Request, req *loginRequest) error {
	token, present := tokenFromRequest(r)
	if !present {
		return errMissingToken
	}
	reg := a.registry().ByToken(token)
	if reg == nil {
		return errUnknownToken.WithMessage("Unknown appservice token")
	}
	who := req.User
	if req.Identifier != nil {
		if req.Identifier.Type != "m.id.user" {
			return mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("Unknown login identifier type %q", req.Identifier.Type)
		}
		who = req.Identifier.User
	}
	if who == "" {
		return missingParam("Missing param: identifier.user")
	}
	userID := a.qualifyUserID(strings.ToLower(who))
	if userID != reg.SenderID(a.cfg.ServerName) && !reg.IsInterestedInUser(userID) {
		return mautrix.MForbidden.WithMessage("Application service cannot log in as this user")
	}
	u, err := a.db.UserByID(r.Context(), userID)
	if errors.Is(err, storage.ErrNotFound) {
		return mautrix.MForbidden.WithMessage("Application service has not registered this user")
	} else if err != nil {
		return err
	}
	if u.Deactivated {
		return mautrix.MUserDeactivated.WithStatus(http.StatusForbidden).WithMessage("This account has been deactivated")
	}
	params, err := newLoginParams(req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken)
	if err != nil {
		return err
	}
	var resp *authResponse
	err = a.db.Write(r.Context(), func(tx *storage.Tx) error {
		var err error
		resp, err = a.issueTokens(r.Context(), tx, u.UserID, params, clientIP(r))
		return err
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, resp)
}

// registerAppserviceRoutes adds the appservice ping and the delivery status
// admins read.
func (a *API) registerAppserviceRoutes(rt routes) {
	rt.v1("/appservice/{appserviceId}/ping", a.authed(a.pingAppservice), http.MethodPost)
	rt.exact("/_agentspace/admin/v1/appservices", a.authed(a.appserviceStatus), http.MethodGet)
}

// pingAppservice is POST /_matrix/client/v1/appservice/{appserviceId}/ping.
func (a *API) pingAppservice(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	id, err := roomVar(r, "appserviceId")
	if err != nil {
		return err
	}
	if !s.AppserviceToken || s.AppserviceID != id {
		return mautrix.MForbidden.WithMessage("Provided access token is not the appservice's as_token for %s", id)
	}
	var body struct {
		TransactionID string `json:"transaction_id"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	reg := a.registry().ByID(id)
	elapsed, err := a.appservices.Ping(r.Context(), reg, body.TransactionID)
	var perr *appservice.PingError
	if errors.As(err, &perr) {
		resp := mautrix.RespError{ErrCode: perr.ErrCode, Err: perr.Message, StatusCode: perr.HTTPStatus}
		if perr.ErrCode == "M_BAD_STATUS" {
			resp = resp.WithExtraField("status", perr.Status).WithExtraField("body", perr.Body)
		}
		return resp
	} else if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]int64{"duration_ms": elapsed.Milliseconds()})
}

// appserviceStatus is GET /_agentspace/admin/v1/appservices: each
// appservice's delivery position, backlog and last error (admins only).
func (a *API) appserviceStatus(w http.ResponseWriter, r *http.Request) error {
	if !sessionFrom(r.Context()).IsAdmin {
		return mautrix.MForbidden.WithMessage("You are not a server admin")
	}
	list, err := a.appservices.Statuses(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"appservices": list})
}

// pushEphemeral hands a typing/receipt/presence event to the appservices
// that want it (a no-op when none is registered).
func (a *API) pushEphemeral(ctx context.Context, roomID, userID string, ev any) {
	if a.appservices == nil || len(a.registry().List()) == 0 {
		return
	}
	b, err := json.Marshal(ev)
	if err != nil {
		a.log.ErrorContext(ctx, "encoding ephemeral event for appservices", "err", err)
		return
	}
	a.appservices.PushEphemeral(ctx, roomID, userID, b)
}

// lookupAlias resolves a local alias; an unknown alias in an appservice's
// namespace is first asked of that appservice, which may create it.
func (a *API) lookupAlias(ctx context.Context, alias string) (*storage.Alias, error) {
	al, err := a.db.AliasByName(ctx, alias)
	if !errors.Is(err, storage.ErrNotFound) || a.appservices == nil {
		return al, err
	}
	if !a.appservices.QueryAlias(ctx, alias) {
		return nil, err
	}
	return a.db.AliasByName(ctx, alias)
}

// lookupUser loads a local user; an unknown user in an appservice's
// namespace is first asked of that appservice, which may register it.
func (a *API) lookupUser(ctx context.Context, userID string) (*storage.User, error) {
	u, err := a.db.UserByID(ctx, userID)
	if !errors.Is(err, storage.ErrNotFound) || a.appservices == nil {
		return u, err
	}
	if !a.appservices.QueryUser(ctx, userID) {
		return nil, err
	}
	return a.db.UserByID(ctx, userID)
}
