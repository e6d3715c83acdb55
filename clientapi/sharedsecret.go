package clientapi

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
	"time"

	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

// Shared-secret registration, as Synapse's admin API does it
// (https://element-hq.github.io/synapse/latest/admin_api/register_api.html):
// GET returns a nonce, POST registers a user given an HMAC-SHA1 over the
// nonce and the account details keyed with registration.shared_secret.

const (
	nonceLifetime = 60 * time.Second
	// maxNonces bounds the store; GET is unauthenticated (and rate limited).
	maxNonces = 10_000
)

// nonceStore holds outstanding shared-secret registration nonces, each
// valid once and for nonceLifetime.
type nonceStore struct {
	mu     sync.Mutex
	nonces map[string]time.Time // nonce → expiry
}

func newNonceStore() *nonceStore { return &nonceStore{nonces: make(map[string]time.Time)} }

// issue makes a new nonce.
func (ns *nonceStore) issue(now time.Time) string {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	for n, exp := range ns.nonces {
		if now.After(exp) {
			delete(ns.nonces, n)
		}
	}
	for n := range ns.nonces {
		if len(ns.nonces) < maxNonces {
			break
		}
		delete(ns.nonces, n) // still over the cap: drop arbitrary ones
	}
	nonce := storage.NewToken("")
	ns.nonces[nonce] = now.Add(nonceLifetime)
	return nonce
}

// take consumes a nonce; false when unknown or expired.
func (ns *nonceStore) take(nonce string, now time.Time) bool {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	exp, ok := ns.nonces[nonce]
	if !ok {
		return false
	}
	delete(ns.nonces, nonce)
	return !now.After(exp)
}

func (a *API) registerSharedSecret(rt routes) {
	const path = "/_synapse/admin/v1/register"
	rt.exact(path, a.public(a.rateLimited(a.sharedSecretNonce)), http.MethodGet)
	rt.exact(path, a.public(a.rateLimited(a.sharedSecretRegister)), http.MethodPost)
}

var errSharedSecretDisabled = mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("Shared secret registration is not enabled")

func (a *API) sharedSecretNonce(w http.ResponseWriter, r *http.Request) error {
	if a.cfg.Registration.SharedSecret == "" {
		return errSharedSecretDisabled
	}
	return writeJSON(w, http.StatusOK, map[string]string{"nonce": a.nonces.issue(time.Now())})
}

type sharedSecretRequest struct {
	Nonce       *string `json:"nonce"`
	Username    *string `json:"username"`
	DisplayName *string `json:"displayname"`
	Password    *string `json:"password"`
	Admin       bool    `json:"admin"`
	UserType    *string `json:"user_type"`
	MAC         *string `json:"mac"`
}

func (a *API) sharedSecretRegister(w http.ResponseWriter, r *http.Request) error {
	secret := a.cfg.Registration.SharedSecret
	if secret == "" {
		return errSharedSecretDisabled
	}
	var req sharedSecretRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if req.Nonce == nil {
		return missingParam("nonce must be specified")
	}
	if !a.nonces.take(*req.Nonce, time.Now()) {
		return mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("unrecognised nonce")
	}
	if req.Username == nil || *req.Username == "" || len(*req.Username) > 512 || strings.ContainsRune(*req.Username, 0) {
		return mautrix.MInvalidParam.WithMessage("Invalid username")
	}
	if req.Password == nil || *req.Password == "" || len(*req.Password) > 512 || strings.ContainsRune(*req.Password, 0) {
		return mautrix.MInvalidParam.WithMessage("Invalid password")
	}
	if req.UserType != nil && *req.UserType != "support" && *req.UserType != "bot" {
		return mautrix.MInvalidParam.WithMessage("Invalid user type")
	}
	if req.MAC == nil {
		return missingParam("mac must be specified")
	}
	got, err := hex.DecodeString(*req.MAC)
	if err != nil || !hmac.Equal(got, sharedSecretMAC(secret, *req.Nonce, *req.Username, *req.Password, req.Admin, req.UserType)) {
		return mautrix.MForbidden.WithMessage("HMAC incorrect")
	}

	localpart := strings.ToLower(*req.Username)
	if err := checkChosenLocalpart(localpart, a.cfg.ServerName); err != nil {
		return err
	}
	displayName := localpart
	if req.DisplayName != nil && *req.DisplayName != "" {
		displayName = *req.DisplayName
	}
	res, err := a.createAccount(r, newAccount{
		Localpart:   localpart,
		Password:    *req.Password,
		DisplayName: displayName,
		Admin:       req.Admin,
		UserType:    req.UserType,
		Login:       &loginParams{},
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, res)
}

// sharedSecretMAC is Synapse's MAC: HMAC-SHA1 keyed with the shared secret
// over nonce NUL username NUL password NUL admin|notadmin [NUL user_type].
func sharedSecretMAC(secret, nonce, username, password string, admin bool, userType *string) []byte {
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(nonce))
	m.Write([]byte{0})
	m.Write([]byte(username))
	m.Write([]byte{0})
	m.Write([]byte(password))
	m.Write([]byte{0})
	if admin {
		m.Write([]byte("admin"))
	} else {
		m.Write([]byte("notadmin"))
	}
	if userType != nil {
		m.Write([]byte{0})
		m.Write([]byte(*userType))
	}
	return m.Sum(nil)
}
