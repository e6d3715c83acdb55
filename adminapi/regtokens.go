package adminapi

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"time"

	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

// Registration tokens:
// https://element-hq.github.io/synapse/latest/usage/administration/admin_api/registration_tokens.html

// tokenChars are the characters a registration token may hold.
const tokenChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"

// registrationTokenJSON is a token as the API shows it.
type registrationTokenJSON struct {
	Token       string `json:"token"`
	UsesAllowed *int64 `json:"uses_allowed"`
	Pending     int64  `json:"pending"`
	Completed   int64  `json:"completed"`
	ExpiryTime  *int64 `json:"expiry_time"`
}

func toTokenJSON(t *storage.RegistrationToken) registrationTokenJSON {
	return registrationTokenJSON{Token: t.Token, UsesAllowed: t.UsesAllowed, Pending: t.Pending, Completed: t.Completed, ExpiryTime: t.ExpiryTime}
}

// listRegistrationTokens is GET /_synapse/admin/v1/registration_tokens[?valid=].
func (a *API) listRegistrationTokens(w http.ResponseWriter, r *http.Request) error {
	valid, err := queryBool(r, "valid")
	if err != nil {
		return err
	}
	ts, err := a.db.RegistrationTokens(r.Context(), valid, time.Now().UnixMilli())
	if err != nil {
		return err
	}
	out := make([]registrationTokenJSON, 0, len(ts))
	for _, t := range ts {
		out = append(out, toTokenJSON(t))
	}
	return writeJSON(w, http.StatusOK, map[string]any{"registration_tokens": out})
}

// usesAllowedParam reads uses_allowed: a non-negative integer or null.
func usesAllowedParam(b body) (*int64, error) {
	return nonNegative(b, "uses_allowed", "uses_allowed must be a non-negative integer or null")
}

func nonNegative(b body, key, msg string) (*int64, error) {
	v, err := b.int(key, func() error { return invalidParam("%s", msg) })
	if err != nil {
		return nil, err
	}
	if v != nil && *v < 0 {
		return nil, invalidParam("%s", msg)
	}
	return v, nil
}

// expiryParam reads expiry_time: an integer (ms) not in the past, or null.
func expiryParam(b body) (*int64, error) {
	v, err := b.int("expiry_time", func() error { return invalidParam("expiry_time must be an integer or null") })
	if err != nil {
		return nil, err
	}
	if v != nil && *v < time.Now().UnixMilli() {
		return nil, invalidParam("expiry_time must not be in the past")
	}
	return v, nil
}

// randomToken makes a token of n characters from tokenChars.
func randomToken(n int) (string, error) {
	var b strings.Builder
	limit := big.NewInt(int64(len(tokenChars)))
	for range n {
		i, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return "", err
		}
		b.WriteByte(tokenChars[i.Int64()])
	}
	return b.String(), nil
}

// newRegistrationToken is POST /_synapse/admin/v1/registration_tokens/new.
func (a *API) newRegistrationToken(w http.ResponseWriter, r *http.Request) error {
	b, err := readBody(r, false)
	if err != nil {
		return err
	}
	var token string
	generate := 0
	if b.has("token") {
		if err := json.Unmarshal(b["token"], &token); err != nil {
			return invalidParam("token must be a string")
		}
		if len(token) == 0 || len(token) > 64 {
			return invalidParam("token must not be empty and must not be longer than 64 characters")
		}
		if strings.Trim(token, tokenChars) != "" {
			return invalidParam("token must consist only of characters matched by the regex [A-Za-z0-9._~-]")
		}
	} else {
		n, err := b.int("length", func() error { return invalidParam("length must be an integer") })
		if err != nil {
			return err
		}
		generate = 16
		if n != nil {
			if *n <= 0 || *n > 64 {
				return invalidParam("length must be greater than zero and not greater than 64")
			}
			generate = int(*n)
		}
	}
	uses, err := usesAllowedParam(b)
	if err != nil {
		return err
	}
	expiry, err := expiryParam(b)
	if err != nil {
		return err
	}
	ctx := r.Context()
	for attempt := 0; ; attempt++ {
		if generate > 0 {
			if token, err = randomToken(generate); err != nil {
				return err
			}
		}
		err = a.db.InsertRegistrationToken(ctx, storage.RegistrationToken{Token: token, UsesAllowed: uses, ExpiryTime: expiry})
		if err == nil {
			break
		}
		if !errors.Is(err, storage.ErrAlreadyExists) {
			return err
		}
		if generate == 0 || attempt >= 10 {
			return invalidParam("Token already exists: %s", token)
		}
	}
	a.log.InfoContext(ctx, "registration token created", "by", callerFrom(ctx).UserID)
	return writeJSON(w, http.StatusOK, registrationTokenJSON{Token: token, UsesAllowed: uses, ExpiryTime: expiry})
}

// tokenVar is the {token} path segment.
func tokenVar(r *http.Request) (string, error) {
	return pathVar(r, "token")
}

func errNoSuchToken(token string) error {
	return mautrix.MNotFound.WithMessage("No such registration token: %s", token)
}

// getRegistrationToken is GET /_synapse/admin/v1/registration_tokens/{token}.
func (a *API) getRegistrationToken(w http.ResponseWriter, r *http.Request) error {
	token, err := tokenVar(r)
	if err != nil {
		return err
	}
	t, err := a.db.RegistrationTokenByName(r.Context(), token, time.Now().UnixMilli())
	if errors.Is(err, storage.ErrNotFound) {
		return errNoSuchToken(token)
	} else if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, toTokenJSON(t))
}

// putRegistrationToken is PUT /_synapse/admin/v1/registration_tokens/{token}:
// change uses_allowed and/or expiry_time.
func (a *API) putRegistrationToken(w http.ResponseWriter, r *http.Request) error {
	token, err := tokenVar(r)
	if err != nil {
		return err
	}
	b, err := readBody(r, false)
	if err != nil {
		return err
	}
	var u storage.RegistrationTokenUpdate
	if b.has("uses_allowed") {
		u.SetUsesAllowed = true
		if u.UsesAllowed, err = usesAllowedParam(b); err != nil {
			return err
		}
	}
	if b.has("expiry_time") {
		u.SetExpiryTime = true
		if u.ExpiryTime, err = expiryParam(b); err != nil {
			return err
		}
	}
	t, err := a.db.UpdateRegistrationToken(r.Context(), token, u, time.Now().UnixMilli())
	if errors.Is(err, storage.ErrNotFound) {
		return errNoSuchToken(token)
	} else if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, toTokenJSON(t))
}

// deleteRegistrationToken is DELETE /_synapse/admin/v1/registration_tokens/{token}.
func (a *API) deleteRegistrationToken(w http.ResponseWriter, r *http.Request) error {
	token, err := tokenVar(r)
	if err != nil {
		return err
	}
	if err := a.db.DeleteRegistrationToken(r.Context(), token); errors.Is(err, storage.ErrNotFound) {
		return errNoSuchToken(token)
	} else if err != nil {
		return err
	}
	a.log.InfoContext(r.Context(), "registration token deleted", "by", callerFrom(r.Context()).UserID)
	return writeJSON(w, http.StatusOK, empty)
}

// mustJSON marshals plain values (maps of strings) that cannot fail.
func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
