package clientapi

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

// maxUserIDLength is the spec's limit on a whole user id, in bytes.
const maxUserIDLength = 255

var localpartChars = regexp.MustCompile(`^[a-z0-9._=\-/+]+$`)

// validateLocalpart checks the spec's user id grammar and length; it is the
// part of the rules that applies to appservice users too.
func validateLocalpart(localpart, serverName string) error {
	if localpart == "" {
		return mautrix.MInvalidUsername.WithMessage("User ID cannot be empty")
	}
	if !localpartChars.MatchString(localpart) {
		return mautrix.MInvalidUsername.WithMessage("User ID can only contain characters a-z, 0-9, or '=_-./+'")
	}
	if len("@"+localpart+":"+serverName) > maxUserIDLength {
		return mautrix.MInvalidUsername.WithMessage("User ID may not be longer than %d characters", maxUserIDLength)
	}
	return nil
}

// checkChosenLocalpart adds Synapse's rules for localparts people choose:
// a leading underscore is left to appservices, all-digit ids to guests.
// (Appservice exclusive namespaces, M_EXCLUSIVE, are checked by the caller:
// see checkUserNamespace.)
func checkChosenLocalpart(localpart, serverName string) error {
	if err := validateLocalpart(localpart, serverName); err != nil {
		return err
	}
	if strings.HasPrefix(localpart, "_") {
		return mautrix.MInvalidUsername.WithMessage("User ID may not begin with _")
	}
	if strings.Trim(localpart, "0123456789") == "" {
		return mautrix.MInvalidUsername.WithMessage("Numeric user IDs are reserved for guest users.")
	}
	return nil
}

var errUserInUse = mautrix.MUserInUse.WithMessage("User ID already taken.")

// registerRequest is the body of POST /register.
type registerRequest struct {
	Auth                     rawAuth `json:"auth"`
	Type                     string  `json:"type"` // m.login.application_service
	Username                 *string `json:"username"`
	Password                 *string `json:"password"`
	DeviceID                 *string `json:"device_id"`
	InitialDeviceDisplayName *string `json:"initial_device_display_name"`
	InhibitLogin             bool    `json:"inhibit_login"`
	RefreshToken             bool    `json:"refresh_token"`
}

// registrationFlows is what open registration asks for: nothing but a
// dummy stage (no captcha, e-mail or token stages are offered).
var registrationFlows = [][]string{{stageDummy}}

// register answers POST /register
// (https://spec.matrix.org/v1.12/client-server-api/#post_matrixclientv3register).
func (a *API) register(w http.ResponseWriter, r *http.Request) error {
	raw, err := readJSONObject(r)
	if err != nil {
		return err
	}
	var req registerRequest
	if err := decodeJSONBytes(raw, &req); err != nil {
		return err
	}
	switch kind := r.URL.Query().Get("kind"); kind {
	case "", "user":
	case "guest":
		return a.registerGuest(w, r, &req)
	default:
		return mautrix.MInvalidParam.WithMessage("Unknown registration kind %q", kind)
	}
	if req.Type == loginTypeAppservice {
		return a.registerAppservice(w, r, &req)
	}
	if _, present := tokenFromRequest(r); present {
		return mautrix.MUnknown.WithStatus(http.StatusBadRequest).
			WithMessage("An access token should not be provided on requests to /register (except if type is m.login.application_service)")
	}
	flows, err := a.registrationFlowsFor(r.Context()) // uia.go: dummy, or a registration token
	if err != nil {
		return err
	}

	// A client may send only {"auth": ...} after the first step; the rest
	// of the request then comes from the session (as Synapse does).
	var stored *uiaSession
	if sessID := authSessionID(req.Auth); sessID != "" {
		if s, ok := a.accounts.uia.get(sessID, time.Now()); ok && s.op == "register" {
			stored = s
			if onlyAuth(raw) && s.regBody != nil {
				auth := req.Auth
				if err := json.Unmarshal(s.regBody, &req); err != nil {
					return fmt.Errorf("decoding stored registration: %w", err)
				}
				req.Auth = auth
			}
		}
	}

	var localpart string
	if req.Username != nil {
		if len(*req.Username) > 512 {
			return mautrix.MInvalidUsername.WithMessage("Invalid username")
		}
		localpart = strings.ToLower(*req.Username)
		if err := checkChosenLocalpart(localpart, a.cfg.ServerName); err != nil {
			return err
		}
		if err := a.checkUserNamespace("@" + localpart + ":" + a.cfg.ServerName); err != nil {
			return err
		}
		taken, err := a.db.LocalpartTaken(r.Context(), localpart)
		if err != nil {
			return err
		}
		if taken {
			return errUserInUse
		}
	}
	if req.Password != nil {
		if err := checkPasswordParam(*req.Password); err != nil {
			return err
		}
	}
	params, err := newLoginParams(req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken)
	if err != nil {
		return err
	}

	sess, ch, err := a.userInteractiveAuth(r, uiaRequest{op: "register", flows: flows, auth: req.Auth})
	if err != nil {
		return err
	}
	if ch != nil {
		// Keep the request (the password only hashed) so the client need
		// not send it again with the next stage.
		if err := a.rememberRegistration(ch.session, stored, raw, req.Password); err != nil {
			return err
		}
		return ch.write(w)
	}

	hash := ""
	if req.Password != nil && *req.Password != "" {
		if hash, err = a.hashPassword(*req.Password); err != nil {
			return err
		}
	} else if stored != nil {
		hash = stored.regPasswordHash
	}
	if hash == "" {
		return missingParam("Missing params: password")
	}
	acc := newAccount{Localpart: localpart, PasswordHash: hash}
	if !req.InhibitLogin {
		acc.Login = params
	}
	resp, err := a.createAccount(r, acc)
	if err != nil {
		return err
	}
	a.completeRegistrationToken(r.Context(), sess.id)
	a.accounts.uia.finish(sess.id)
	return writeJSON(w, http.StatusOK, resp)
}

// rememberRegistration stores the registration body (without the password)
// and the password's hash in the UIA session.
func (a *API) rememberRegistration(sessID string, stored *uiaSession, raw json.RawMessage, password *string) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return fmt.Errorf("re-reading registration body: %w", err)
	}
	delete(fields, "password")
	delete(fields, "auth")
	body, err := json.Marshal(fields)
	if err != nil {
		return fmt.Errorf("storing registration body: %w", err)
	}
	hash := ""
	if password != nil && *password != "" && (stored == nil || stored.id != sessID || stored.regPasswordHash == "") {
		if hash, err = a.hashPassword(*password); err != nil {
			return err
		}
	}
	a.accounts.uia.update(sessID, func(s *uiaSession) {
		if len(fields) > 0 {
			s.regBody = body
		}
		if hash != "" {
			s.regPasswordHash = hash
		}
	})
	return nil
}

// authSessionID reads auth.session without validating the rest.
func authSessionID(auth rawAuth) string {
	var a struct {
		Session string `json:"session"`
	}
	if len(auth) == 0 || json.Unmarshal(auth, &a) != nil {
		return ""
	}
	return a.Session
}

// onlyAuth reports whether a request body holds nothing but "auth".
func onlyAuth(raw json.RawMessage) bool {
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil {
		return false
	}
	for k := range fields {
		if k != "auth" {
			return false
		}
	}
	return true
}

// registerGuest handles POST /register?kind=guest: a guest account with a
// generated numeric localpart and no password.
func (a *API) registerGuest(w http.ResponseWriter, r *http.Request, req *registerRequest) error {
	if !a.cfg.Registration.AllowGuests {
		return mautrix.MForbidden.WithMessage("Guest access is disabled")
	}
	params, err := newLoginParams(req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken)
	if err != nil {
		return err
	}
	resp, err := a.createAccount(r, newAccount{Guest: true, Login: params})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, resp)
}

// registerAvailable answers GET /register/available.
func (a *API) registerAvailable(w http.ResponseWriter, r *http.Request) error {
	if _, err := a.registrationFlowsFor(r.Context()); err != nil {
		return err
	}
	username := r.URL.Query().Get("username")
	if username == "" {
		return missingParam("Missing string query parameter 'username'")
	}
	if err := checkChosenLocalpart(username, a.cfg.ServerName); err != nil {
		return err
	}
	if err := a.checkUserNamespace("@" + username + ":" + a.cfg.ServerName); err != nil {
		return err
	}
	taken, err := a.db.LocalpartTaken(r.Context(), username)
	if err != nil {
		return err
	}
	if taken {
		return errUserInUse
	}
	return writeJSON(w, http.StatusOK, map[string]bool{"available": true})
}

// newAccount describes an account to create.
type newAccount struct {
	Localpart    string // "" generates a numeric one (guests, or no username given)
	Password     string // plain text; hashed here unless PasswordHash is set
	PasswordHash string
	DisplayName  string // "" means the localpart, as Synapse does
	Admin        bool
	Guest        bool
	UserType     *string
	AppserviceID *string
	// Login, when set, logs the new account in; nil is inhibit_login.
	Login *loginParams
}

// createAccount creates a user (and, unless inhibited, its first device and
// tokens) in one transaction. Users listed in admin_users become admins.
func (a *API) createAccount(r *http.Request, acc newAccount) (*authResponse, error) {
	ctx := r.Context()
	hash := acc.PasswordHash
	if hash == "" && acc.Password != "" {
		var err error
		if hash, err = a.hashPassword(acc.Password); err != nil {
			return nil, err
		}
	}
	var resp *authResponse
	err := a.db.Write(ctx, func(tx *storage.Tx) error {
		localpart := acc.Localpart
		if localpart == "" {
			var err error
			if localpart, err = generateLocalpart(r, tx); err != nil {
				return err
			}
		} else if taken, err := tx.LocalpartTaken(ctx, localpart); err != nil {
			return err
		} else if taken {
			return errUserInUse
		}
		userID := "@" + localpart + ":" + a.cfg.ServerName
		displayName := acc.DisplayName
		if displayName == "" {
			displayName = localpart
		}
		u := &storage.User{
			UserID: userID, Localpart: localpart, PasswordHash: hash, CreatedTS: time.Now().UnixMilli(),
			IsGuest: acc.Guest, IsAdmin: acc.Admin || a.cfg.IsAdminLocalpart(localpart),
			UserType: acc.UserType, AppserviceID: acc.AppserviceID, DisplayName: &displayName,
		}
		if err := tx.InsertUser(ctx, u); err != nil {
			if errors.Is(err, storage.ErrAlreadyExists) {
				return errUserInUse
			}
			return err
		}
		if acc.Login == nil {
			resp = &authResponse{UserID: userID, HomeServer: a.cfg.ServerName}
			return nil
		}
		var err error
		resp, err = a.issueTokens(ctx, tx, userID, acc.Login, clientIP(r))
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// generateLocalpart picks a free numeric localpart (Synapse numbers its
// generated users too; chosen usernames may not be all digits).
func generateLocalpart(r *http.Request, tx *storage.Tx) (string, error) {
	for range 10 {
		n, err := rand.Int(rand.Reader, big.NewInt(9_000_000_000))
		if err != nil {
			return "", fmt.Errorf("generating user id: %w", err)
		}
		lp := strconv.FormatInt(n.Int64()+1_000_000_000, 10)
		taken, err := tx.LocalpartTaken(r.Context(), lp)
		if err != nil {
			return "", err
		}
		if !taken {
			return lp, nil
		}
	}
	return "", errors.New("could not find a free user id")
}
