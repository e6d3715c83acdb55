package clientapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// Login types (https://spec.matrix.org/v1.12/client-server-api/#login).
const (
	loginTypePassword   = "m.login.password"
	loginTypeAppservice = "m.login.application_service"
)

// loginFlows answers GET /login.
func (a *API) loginFlows(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, map[string]any{
		"flows": []map[string]string{{"type": loginTypePassword}, {"type": loginTypeAppservice}},
	})
}

type loginRequest struct {
	Type       string          `json:"type"`
	Identifier *userIdentifier `json:"identifier"`
	// User, Medium and Address are the pre-identifier (r0.x) forms.
	User                     string  `json:"user"`
	Medium                   string  `json:"medium"`
	Address                  string  `json:"address"`
	Password                 *string `json:"password"`
	DeviceID                 *string `json:"device_id"`
	InitialDeviceDisplayName *string `json:"initial_device_display_name"`
	RefreshToken             bool    `json:"refresh_token"`
}

// errBadLogin is the one answer to an unknown user and a wrong password, so
// the response does not reveal which accounts exist.
var errBadLogin = mautrix.MForbidden.WithMessage("Invalid username or password")

// login answers POST /login.
func (a *API) login(w http.ResponseWriter, r *http.Request) error {
	var req loginRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	switch req.Type {
	case loginTypePassword:
	case loginTypeAppservice:
		return a.loginAppservice(w, r, &req)
	default:
		return mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("Unknown login type %q", req.Type)
	}
	who := req.User
	if req.Identifier != nil {
		switch req.Identifier.Type {
		case "m.id.user":
			who = req.Identifier.User
		case "m.id.thirdparty", "m.id.phone":
			return mautrix.MForbidden.WithMessage("Third-party identifiers are not supported by this server")
		default:
			return mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("Unknown login identifier type %q", req.Identifier.Type)
		}
	} else if req.Medium != "" || req.Address != "" {
		return mautrix.MForbidden.WithMessage("Third-party identifiers are not supported by this server")
	}
	if who == "" {
		return missingParam("Missing param: identifier.user")
	}
	if req.Password == nil {
		return missingParam("Missing param: password")
	}
	params, err := newLoginParams(req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken)
	if err != nil {
		return err
	}

	ctx := r.Context()
	u, err := a.findLoginUser(ctx, who)
	if err != nil {
		return err
	}
	if u == nil {
		a.checkPassword("", *req.Password) // same cost as a real check
		return errBadLogin
	}
	if u.Deactivated {
		return mautrix.MUserDeactivated.WithStatus(http.StatusForbidden).WithMessage("This account has been deactivated")
	}
	if !a.checkPassword(u.PasswordHash, *req.Password) {
		return errBadLogin
	}
	var resp *authResponse
	err = a.db.Write(ctx, func(tx *storage.Tx) error {
		var err error
		resp, err = a.issueTokens(ctx, tx, u.UserID, params, clientIP(r))
		return err
	})
	if err != nil {
		return err
	}
	if a.cfg.PublicBaseURL != "" {
		resp.WellKnown = map[string]any{"m.homeserver": map[string]string{"base_url": a.cfg.PublicBaseURL}}
	}
	return writeJSON(w, http.StatusOK, resp)
}

// qualifyUserID turns a localpart or a full user id into a full user id on
// this server (a full id is returned as given).
func (a *API) qualifyUserID(who string) string {
	if strings.HasPrefix(who, "@") {
		return who
	}
	return "@" + who + ":" + a.cfg.ServerName
}

// findLoginUser resolves what a client typed at login to a local account:
// exactly as given first, then lower-cased (localparts are registered
// lower-case; users type "Alice"). nil when there is no such user.
func (a *API) findLoginUser(ctx context.Context, who string) (*storage.User, error) {
	userID := a.qualifyUserID(who)
	localpart, server, ok := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	if !ok || server != a.cfg.ServerName || localpart == "" {
		return nil, nil
	}
	candidates := []string{userID}
	if lower := "@" + strings.ToLower(localpart) + ":" + server; lower != userID {
		candidates = append(candidates, lower)
	}
	for _, id := range candidates {
		u, err := a.db.UserByID(ctx, id)
		if err == nil {
			return u, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return nil, fmt.Errorf("looking up %s: %w", id, err)
		}
	}
	return nil, nil
}

// bcryptInput is what bcrypt sees of a password: bcrypt reads at most 72
// bytes (Synapse's hashes behave the same), and Go's implementation refuses
// longer input instead of ignoring the rest.
func bcryptInput(password string) []byte {
	b := []byte(password)
	if len(b) > 72 {
		b = b[:72]
	}
	return b
}

// hashPassword hashes a new password at the configured bcrypt cost.
func (a *API) hashPassword(password string) (string, error) {
	h, err := bcrypt.GenerateFromPassword(bcryptInput(password), a.cfg.BcryptCost)
	if err != nil {
		return "", fmt.Errorf("hashing password: %w", err)
	}
	return string(h), nil
}

// checkPassword compares a password with a stored hash in constant time.
// An empty hash (no password set, unknown user) still costs one bcrypt
// comparison, against a dummy hash, so timing does not tell them apart.
func (a *API) checkPassword(hash, password string) bool {
	if hash == "" {
		_ = bcrypt.CompareHashAndPassword(a.dummyHash(), bcryptInput(password))
		return false
	}
	return bcrypt.CompareHashAndPassword([]byte(hash), bcryptInput(password)) == nil
}

// dummyHash is a hash of a random password at the configured cost.
func (a *API) dummyHash() []byte {
	st := a.accounts
	st.dummyOnce.Do(func() {
		h, err := bcrypt.GenerateFromPassword([]byte(storage.NewToken("")), a.cfg.BcryptCost)
		if err != nil {
			// Only an invalid cost fails, which config validation rules out.
			panic(fmt.Sprintf("bcrypt dummy hash: %v", err))
		}
		st.dummyHash = h
	})
	return st.dummyHash
}

// checkPasswordParam validates a password given by a client.
func checkPasswordParam(pw string) error {
	if len(pw) > 512 {
		return mautrix.MInvalidParam.WithMessage("Invalid password: longer than 512 bytes")
	}
	return nil
}

// loginParams says which device and tokens a login or registration gets.
type loginParams struct {
	DeviceID     string  // "" generates one
	DisplayName  *string // initial_device_display_name of a new device
	RefreshToken bool    // expiring access token plus a refresh token
}

// newLoginParams validates the device fields of a login/register body.
func newLoginParams(deviceID, displayName *string, refresh bool) (*loginParams, error) {
	p := &loginParams{DisplayName: displayName, RefreshToken: refresh}
	if deviceID != nil {
		if *deviceID == "" || len(*deviceID) > 512 || strings.ContainsAny(*deviceID, "\x00\n\r") {
			return nil, mautrix.MInvalidParam.WithMessage("Invalid device_id")
		}
		p.DeviceID = *deviceID
	}
	if displayName != nil && len(*displayName) > maxDeviceDisplayName {
		return nil, mautrix.MInvalidParam.WithMessage("Device display name is too long (max %d)", maxDeviceDisplayName)
	}
	return p, nil
}

// authResponse is the body of a successful login or registration.
type authResponse struct {
	UserID       string         `json:"user_id"`
	AccessToken  string         `json:"access_token,omitempty"`
	DeviceID     string         `json:"device_id,omitempty"`
	HomeServer   string         `json:"home_server"`
	ExpiresInMS  int64          `json:"expires_in_ms,omitempty"`
	RefreshToken string         `json:"refresh_token,omitempty"`
	WellKnown    map[string]any `json:"well_known,omitempty"`
}

// newDeviceID is 10 upper-case letters, as Synapse makes them.
func newDeviceID() string {
	return strings.ToUpper(rooms.RandomString(10))
}

// issueTokens creates (or reuses) the device and issues its access token
// and, when asked, a refresh token. Reusing a device id keeps the device
// and its keys but revokes its earlier tokens.
func (a *API) issueTokens(ctx context.Context, tx *storage.Tx, userID string, p *loginParams, ip string) (*authResponse, error) {
	deviceID := p.DeviceID
	if deviceID == "" {
		deviceID = newDeviceID()
	}
	now := time.Now()
	exists, err := tx.DeviceExists(ctx, userID, deviceID)
	if err != nil {
		return nil, err
	}
	if exists {
		if err := tx.DeleteDeviceTokens(ctx, userID, deviceID); err != nil {
			return nil, err
		}
	} else {
		d := &storage.Device{UserID: userID, DeviceID: deviceID, DisplayName: p.DisplayName,
			CreatedTS: now.UnixMilli(), LastSeenTS: now.UnixMilli(), LastSeenIP: ip}
		if err := tx.UpsertDevice(ctx, d); err != nil {
			return nil, fmt.Errorf("creating device: %w", err)
		}
		if err := a.markDeviceListChanged(ctx, tx, userID); err != nil {
			return nil, err
		}
	}
	resp := &authResponse{UserID: userID, DeviceID: deviceID, HomeServer: a.cfg.ServerName}
	if err := a.insertTokens(ctx, tx, userID, deviceID, p.RefreshToken, now, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// insertTokens stores a new access token (and refresh token) for a device
// and puts them in resp.
func (a *API) insertTokens(ctx context.Context, tx *storage.Tx, userID, deviceID string, refresh bool, now time.Time, resp *authResponse) error {
	access := storage.NewToken("syt_")
	at := &storage.AccessToken{TokenHash: storage.HashToken(access), UserID: userID, DeviceID: deviceID, CreatedTS: now.UnixMilli()}
	if refresh {
		rt := storage.NewToken("syr_")
		rh := storage.HashToken(rt)
		if err := tx.InsertRefreshToken(ctx, rh, userID, deviceID); err != nil {
			return fmt.Errorf("storing refresh token: %w", err)
		}
		lifetime := a.cfg.AccessTokenLifetime.Duration
		at.RefreshTokenHash = &rh
		at.ExpiresTS = now.Add(lifetime).UnixMilli()
		resp.RefreshToken = rt
		resp.ExpiresInMS = max(lifetime.Milliseconds(), 1)
	}
	if err := tx.InsertAccessToken(ctx, at); err != nil {
		return fmt.Errorf("storing access token: %w", err)
	}
	resp.AccessToken = access
	return nil
}

// refresh answers POST /refresh: a refresh token buys a new access token and
// a new refresh token; the old pair is revoked.
func (a *API) refresh(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		RefreshToken *string `json:"refresh_token"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if req.RefreshToken == nil || *req.RefreshToken == "" {
		return missingParam("Missing param: refresh_token")
	}
	ctx := r.Context()
	hash := storage.HashToken(*req.RefreshToken)
	var resp authResponse
	err := a.db.Write(ctx, func(tx *storage.Tx) error {
		userID, deviceID, err := tx.RefreshTokenOwner(ctx, hash)
		if errors.Is(err, storage.ErrNotFound) {
			return errUnknownToken.WithMessage("Unknown refresh token")
		} else if err != nil {
			return fmt.Errorf("looking up refresh token: %w", err)
		}
		if err := tx.DeleteRefreshToken(ctx, hash); err != nil {
			return fmt.Errorf("revoking refresh token: %w", err)
		}
		return a.insertTokens(ctx, tx, userID, deviceID, true, time.Now(), &resp)
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{
		"access_token": resp.AccessToken, "refresh_token": resp.RefreshToken, "expires_in_ms": resp.ExpiresInMS,
	})
}
