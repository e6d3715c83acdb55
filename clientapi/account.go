package clientapi

import (
	"context"
	"fmt"
	"net/http"
	"sync"

	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// accountState is the in-memory state of the account endpoints.
type accountState struct {
	uia  *uiaStore
	seen *seenTracker

	// dummyHash is a bcrypt hash of a random password at the configured
	// cost: logins for unknown users are compared against it so they take
	// as long as logins for known ones.
	dummyOnce sync.Once
	dummyHash []byte
}

func newAccountState() *accountState {
	return &accountState{uia: newUIAStore(), seen: newSeenTracker()}
}

// registerAccount registers registration, login, logout, password,
// deactivation, device, profile and shared-secret registration routes.
func (a *API) registerAccount(rt routes) {
	// register.go
	rt.client("/register", a.public(a.rateLimited(a.register)), http.MethodPost)
	rt.client("/register/available", a.public(a.rateLimited(a.registerAvailable)), http.MethodGet)
	// login.go
	rt.client("/login", a.public(a.loginFlows), http.MethodGet)
	rt.client("/login", a.public(a.rateLimited(a.login)), http.MethodPost)
	rt.client("/refresh", a.public(a.rateLimited(a.refresh)), http.MethodPost)
	rt.v1("/refresh", a.public(a.rateLimited(a.refresh)), http.MethodPost) // matrix-js-sdk tries v1 first
	// this file
	rt.client("/logout", a.authed(a.logout), http.MethodPost)
	rt.client("/logout/all", a.authed(a.logoutAll), http.MethodPost)
	rt.client("/account/whoami", a.authed(a.whoami), http.MethodGet)
	rt.client("/account/password", a.authed(a.rateLimited(a.changePassword)), http.MethodPost)
	rt.client("/account/deactivate", a.authed(a.rateLimited(a.deactivate)), http.MethodPost)
	rt.client("/account/3pid", a.authed(a.threePIDs), http.MethodGet)
	for _, p := range []string{"/register/email/requestToken", "/register/msisdn/requestToken",
		"/account/password/email/requestToken", "/account/password/msisdn/requestToken",
		"/account/3pid/email/requestToken", "/account/3pid/msisdn/requestToken"} {
		rt.client(p, a.public(a.threePIDDenied), http.MethodPost)
	}
	// devices.go
	rt.client("/devices", a.authed(a.listDevices), http.MethodGet)
	rt.client("/devices/{deviceId}", a.authed(a.getDevice), http.MethodGet)
	rt.client("/devices/{deviceId}", a.authed(a.updateDevice), http.MethodPut)
	rt.client("/devices/{deviceId}", a.authed(a.rateLimited(a.deleteDevice)), http.MethodDelete)
	rt.client("/delete_devices", a.authed(a.rateLimited(a.deleteDevices)), http.MethodPost)
	// profile.go
	rt.client("/profile/{userId}", a.optionalAuth(a.getProfile), http.MethodGet)
	rt.client("/profile/{userId}/{field:displayname|avatar_url}", a.optionalAuth(a.getProfileField), http.MethodGet)
	rt.client("/profile/{userId}/{field:displayname|avatar_url}", a.authed(a.setProfileField), http.MethodPut)
	// sharedsecret.go
	a.registerSharedSecret(rt)
}

// missingParam is 400 M_MISSING_PARAM (mautrix has no predefined value).
func missingParam(format string, args ...any) error {
	return mautrix.RespError{ErrCode: "M_MISSING_PARAM", StatusCode: http.StatusBadRequest}.WithMessage(format, args...)
}

// markDeviceListChanged records a device-list change of userID in tx and,
// after commit, wakes everyone sharing a room with the user so /sync
// reports it in device_lists.changed. The E2EE endpoints call it for key
// changes too.
func (a *API) markDeviceListChanged(ctx context.Context, tx *storage.Tx, userID string) error {
	pos, err := tx.MarkDeviceListChanged(ctx, userID)
	if err != nil {
		return err
	}
	n := a.rooms.Notifier()
	tx.OnCommit(func() { n.Advance(pos, rooms.Wake{ShareRoomsWith: []string{userID}}) })
	return nil
}

// deleteDevices removes devices with their tokens and keys and records one
// device-list change. Unknown ids are skipped.
func (a *API) deleteDevicesTx(ctx context.Context, tx *storage.Tx, userID string, deviceIDs []string) error {
	if len(deviceIDs) == 0 {
		return nil
	}
	for _, d := range deviceIDs {
		if err := tx.DeleteDevice(ctx, userID, d); err != nil {
			return err
		}
		a.accounts.seen.forget(userID, d)
	}
	return a.markDeviceListChanged(ctx, tx, userID)
}

// whoami answers GET /account/whoami.
func (a *API) whoami(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	resp := map[string]any{"user_id": s.UserID, "is_guest": s.IsGuest}
	if s.DeviceID != "" {
		resp["device_id"] = s.DeviceID
	}
	return writeJSON(w, http.StatusOK, resp)
}

// logout answers POST /logout: the token's device goes, with its tokens and keys.
func (a *API) logout(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ctx := r.Context()
	err := a.db.Write(ctx, func(tx *storage.Tx) error {
		if err := tx.DeleteAccessToken(ctx, s.TokenHash); err != nil {
			return fmt.Errorf("revoking token: %w", err)
		}
		if s.DeviceID == "" {
			return nil
		}
		return a.deleteDevicesTx(ctx, tx, s.UserID, []string{s.DeviceID})
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// logoutAll answers POST /logout/all: every device and token of the user goes.
func (a *API) logoutAll(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ctx := r.Context()
	err := a.db.Write(ctx, func(tx *storage.Tx) error {
		return a.deleteAllDevicesTx(ctx, tx, s.UserID)
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// passwordFlows is the UIA of endpoints that need the user's password again.
var passwordFlows = [][]string{{stagePassword}}

type changePasswordRequest struct {
	Auth          rawAuth `json:"auth"`
	NewPassword   *string `json:"new_password"`
	LogoutDevices *bool   `json:"logout_devices"`
}

// changePassword answers POST /account/password.
func (a *API) changePassword(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	var req changePasswordRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if req.NewPassword != nil {
		if err := checkPasswordParam(*req.NewPassword); err != nil {
			return err
		}
	}
	sess, done, err := a.requireUIA(w, r, uiaRequest{op: "password", userID: s.UserID, flows: passwordFlows, auth: req.Auth})
	if !done {
		return err
	}
	if req.NewPassword == nil || *req.NewPassword == "" {
		return missingParam("Missing param: new_password")
	}
	hash, err := a.hashPassword(*req.NewPassword)
	if err != nil {
		return err
	}
	ctx := r.Context()
	logoutDevices := req.LogoutDevices == nil || *req.LogoutDevices
	err = a.db.Write(ctx, func(tx *storage.Tx) error {
		if err := tx.SetPasswordHash(ctx, s.UserID, hash); err != nil {
			return fmt.Errorf("setting password: %w", err)
		}
		if !logoutDevices {
			return nil
		}
		// Spec: the other access tokens and their devices are revoked.
		ids, err := tx.DeviceIDsOfUser(ctx, s.UserID, nil)
		if err != nil {
			return err
		}
		others := make([]string, 0, len(ids))
		for _, id := range ids {
			if id != s.DeviceID {
				others = append(others, id)
			}
		}
		if err := a.deleteDevicesTx(ctx, tx, s.UserID, others); err != nil {
			return err
		}
		return tx.DeleteUserTokensExcept(ctx, s.UserID, s.TokenHash)
	})
	if err != nil {
		return err
	}
	a.accounts.uia.finish(sess.id)
	return writeJSON(w, http.StatusOK, empty)
}

type deactivateRequest struct {
	Auth  rawAuth `json:"auth"`
	Erase bool    `json:"erase"`
}

// deactivate answers POST /account/deactivate: the account is closed for
// good, every token and device goes, and the user leaves every room.
func (a *API) deactivate(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	var req deactivateRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	sess, done, err := a.requireUIA(w, r, uiaRequest{op: "deactivate", userID: s.UserID, flows: passwordFlows, auth: req.Auth})
	if !done {
		return err
	}
	ctx := r.Context()
	err = a.db.Write(ctx, func(tx *storage.Tx) error {
		if err := tx.SetDeactivated(ctx, s.UserID, true); err != nil {
			return fmt.Errorf("deactivating: %w", err)
		}
		if req.Erase {
			if err := tx.SetProfile(ctx, s.UserID, nil, nil); err != nil {
				return fmt.Errorf("erasing profile: %w", err)
			}
		}
		return a.deleteAllDevicesTx(ctx, tx, s.UserID)
	})
	if err != nil {
		return err
	}
	a.accounts.uia.finish(sess.id)
	// The account is closed whatever happens below; a room that refuses
	// the leave is logged rather than failing the request.
	// Leaving goes on even if the client hangs up: a half-left account is worse.
	ctx = context.WithoutCancel(ctx)
	ms, err := a.db.MembershipsOfUser(ctx, s.UserID, "join", "invite", "knock")
	if err != nil {
		return fmt.Errorf("listing rooms to leave: %w", err)
	}
	for _, m := range ms {
		_, err := a.rooms.ChangeMembership(ctx, m.RoomID, rooms.MembershipRequest{Sender: s.UserID, Target: s.UserID, Membership: "leave"})
		if err != nil {
			a.log.WarnContext(ctx, "deactivation: leaving room failed", "user_id", s.UserID, "room_id", m.RoomID, "err", err)
		}
	}
	return writeJSON(w, http.StatusOK, map[string]string{"id_server_unbind_result": "no-support"})
}

// threePIDs answers GET /account/3pid: this server stores no third-party
// identifiers (m.3pid_changes is disabled in /capabilities).
func (a *API) threePIDs(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, map[string]any{"threepids": []any{}})
}

// threePIDDenied answers the requestToken endpoints: there is no e-mail or
// SMS delivery, so no third-party identifier can be validated.
func (a *API) threePIDDenied(w http.ResponseWriter, r *http.Request) error {
	return mautrix.RespError{ErrCode: "M_THREEPID_DENIED", StatusCode: http.StatusBadRequest}.
		WithMessage("Third-party identifiers are not supported by this server")
}

// deleteAllDevicesTx removes every device of a user and revokes all their
// access and refresh tokens (logout/all, deactivation).
func (a *API) deleteAllDevicesTx(ctx context.Context, tx *storage.Tx, userID string) error {
	ids, err := tx.DeviceIDsOfUser(ctx, userID, nil)
	if err != nil {
		return err
	}
	if err := a.deleteDevicesTx(ctx, tx, userID, ids); err != nil {
		return err
	}
	return tx.DeleteUserTokens(ctx, userID)
}
