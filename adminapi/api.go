// Package adminapi serves the subset of Synapse's admin API
// (https://element-hq.github.io/synapse/latest/usage/administration/admin_api/)
// that admin tools and scripts speak: users, devices, rooms (listing,
// details, deletion with purge and block, force-join, power), history purges
// and registration tokens, under /_synapse/admin/... with Synapse's paths,
// parameters and response shapes.
//
// Every endpoint except server_version needs the access token of a server
// admin: 401 M_MISSING_TOKEN / M_UNKNOWN_TOKEN without a valid token, 403
// M_FORBIDDEN for everyone else, before anything about the target is looked
// at, so a refusal reveals nothing. Authentication is the client API's
// (package clientapi wires it in as an Authenticate function: this package
// cannot import clientapi, which mounts it).
package adminapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	"github.com/gorilla/mux"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// Caller is the authenticated user of an admin request.
type Caller struct {
	UserID   string
	DeviceID string
	// IsAdmin: users.is_admin or listed in the admin_users configuration.
	IsAdmin bool
	IsGuest bool
	// TokenHash identifies the caller's access token (storage.HashToken).
	TokenHash string
}

// Authenticate resolves a request's access token. Its errors are Matrix
// errors (M_MISSING_TOKEN, M_UNKNOWN_TOKEN) written to the client as they are.
type Authenticate func(r *http.Request) (*Caller, error)

// Deps is what the admin API needs from the rest of the server.
type Deps struct {
	Config *config.Config
	DB     *storage.DB
	Rooms  *rooms.Service
	Log    *slog.Logger
	// Authenticate checks the request's access token.
	Authenticate Authenticate
	// HashPassword hashes a new password the way logins check it.
	HashPassword func(password string) (string, error)
}

// API serves the admin endpoints.
type API struct {
	cfg   *config.Config
	db    *storage.DB
	rooms *rooms.Service
	log   *slog.Logger
	auth  Authenticate
	hash  func(string) (string, error)

	// tasks are room deletions and history purges running in the background.
	tasks *taskStore
	// bg counts the running background tasks; Close waits for them.
	bg     sync.WaitGroup
	closed bool
	mu     sync.Mutex
}

// New builds the admin API; it starts nothing.
func New(d Deps) *API {
	return &API{
		cfg:   d.Config,
		db:    d.DB,
		rooms: d.Rooms,
		log:   d.Log,
		auth:  d.Authenticate,
		hash:  d.HashPassword,
		tasks: newTaskStore(),
	}
}

// handler is the shape of every endpoint: it writes its own success
// response and returns an error for everything else.
type handler func(w http.ResponseWriter, r *http.Request) error

type callerKey struct{}

// callerFrom returns the admin making the request.
func callerFrom(ctx context.Context) *Caller {
	c, _ := ctx.Value(callerKey{}).(*Caller)
	return c
}

var errNotAdmin = mautrix.MForbidden.WithMessage("You are not a server admin")

// admin wraps an endpoint for server admins only.
func (a *API) admin(h handler) http.Handler {
	return a.wrap(func(w http.ResponseWriter, r *http.Request) error {
		c, err := a.auth(r)
		if err != nil {
			return err
		}
		if !c.IsAdmin || c.IsGuest {
			return errNotAdmin
		}
		return h(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	})
}

// wrap renders a handler's error.
func (a *API) wrap(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			a.writeError(w, r, err)
		}
	})
}

// Register mounts every admin endpoint on the server's router.
func (a *API) Register(root *mux.Router) {
	const v1, v2 = "/_synapse/admin/v1", "/_synapse/admin/v2"
	handle := func(path string, h http.Handler, method string) {
		root.Handle(path, h).Methods(method, http.MethodOptions)
	}
	handle(v1+"/server_version", a.wrap(a.serverVersion), http.MethodGet)

	// users.go
	handle(v2+"/users", a.admin(a.listUsers), http.MethodGet)
	handle("/_synapse/admin/v3/users", a.admin(a.listUsersV3), http.MethodGet)
	handle(v2+"/users/{userId}", a.admin(a.getUser), http.MethodGet)
	handle(v2+"/users/{userId}", a.admin(a.putUser), http.MethodPut)
	handle(v1+"/reset_password/{userId}", a.admin(a.resetPassword), http.MethodPost)
	handle(v1+"/deactivate/{userId}", a.admin(a.deactivateUser), http.MethodPost)
	handle(v1+"/users/{userId}/admin", a.admin(a.getUserAdmin), http.MethodGet)
	handle(v1+"/users/{userId}/admin", a.admin(a.putUserAdmin), http.MethodPut)
	handle(v1+"/whois/{userId}", a.admin(a.whois), http.MethodGet)
	for _, p := range []string{"/_matrix/client/v3", "/_matrix/client/r0"} {
		// The spec's whois: a user may also ask about themselves.
		handle(p+"/admin/whois/{userId}", a.wrap(a.clientWhois), http.MethodGet)
	}
	handle(v1+"/users/{userId}/joined_rooms", a.admin(a.userJoinedRooms), http.MethodGet)
	handle(v1+"/users/{userId}/memberships", a.admin(a.userMemberships), http.MethodGet)
	handle(v1+"/users/{userId}/login", a.admin(a.loginAsUser), http.MethodPost)
	handle(v1+"/username_available", a.admin(a.usernameAvailable), http.MethodGet)
	// devices.go
	handle(v2+"/users/{userId}/devices", a.admin(a.listDevices), http.MethodGet)
	handle(v2+"/users/{userId}/devices", a.admin(a.createDevice), http.MethodPost)
	handle(v2+"/users/{userId}/delete_devices", a.admin(a.deleteDevices), http.MethodPost)
	handle(v2+"/users/{userId}/devices/{deviceId}", a.admin(a.getDevice), http.MethodGet)
	handle(v2+"/users/{userId}/devices/{deviceId}", a.admin(a.putDevice), http.MethodPut)
	handle(v2+"/users/{userId}/devices/{deviceId}", a.admin(a.deleteDevice), http.MethodDelete)

	// rooms.go
	handle(v1+"/rooms", a.admin(a.listRooms), http.MethodGet)
	handle(v1+"/rooms/{roomId}", a.admin(a.getRoom), http.MethodGet)
	handle(v1+"/rooms/{roomId}/members", a.admin(a.roomMembers), http.MethodGet)
	handle(v1+"/rooms/{roomId}/state", a.admin(a.roomState), http.MethodGet)
	handle(v1+"/rooms/{roomId}/messages", a.admin(a.roomMessages), http.MethodGet)
	handle(v1+"/rooms/{roomId}/block", a.admin(a.getBlock), http.MethodGet)
	handle(v1+"/rooms/{roomId}/block", a.admin(a.putBlock), http.MethodPut)
	handle(v1+"/rooms/{roomIdOrAlias}/make_room_admin", a.admin(a.makeRoomAdmin), http.MethodPost)
	handle(v1+"/join/{roomIdOrAlias}", a.admin(a.joinUser), http.MethodPost)
	// delete.go
	handle(v1+"/rooms/{roomId}", a.admin(a.deleteRoomV1), http.MethodDelete)
	handle(v2+"/rooms/{roomId}", a.admin(a.deleteRoomV2), http.MethodDelete)
	handle(v2+"/rooms/{roomId}/delete_status", a.admin(a.deleteStatusByRoom), http.MethodGet)
	handle(v2+"/rooms/delete_status/{deleteId}", a.admin(a.deleteStatusByID), http.MethodGet)
	handle(v1+"/purge_history/{roomId}", a.admin(a.purgeHistory), http.MethodPost)
	handle(v1+"/purge_history/{roomId}/{eventId}", a.admin(a.purgeHistory), http.MethodPost)
	handle(v1+"/purge_history_status/{purgeId}", a.admin(a.purgeHistoryStatus), http.MethodGet)

	// regtokens.go
	handle(v1+"/registration_tokens", a.admin(a.listRegistrationTokens), http.MethodGet)
	handle(v1+"/registration_tokens/new", a.admin(a.newRegistrationToken), http.MethodPost)
	handle(v1+"/registration_tokens/{token}", a.admin(a.getRegistrationToken), http.MethodGet)
	handle(v1+"/registration_tokens/{token}", a.admin(a.putRegistrationToken), http.MethodPut)
	handle(v1+"/registration_tokens/{token}", a.admin(a.deleteRegistrationToken), http.MethodDelete)
}

// Close stops taking background tasks and waits (until ctx ends) for the
// running ones, so the database can be closed after it.
func (a *API) Close(ctx context.Context) error {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	done := make(chan struct{})
	go func() {
		a.bg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("admin tasks still running: %w", ctx.Err())
	}
}

// goBackground runs fn as a background task unless the API is closing.
func (a *API) goBackground(fn func()) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return mautrix.MUnknown.WithStatus(http.StatusServiceUnavailable).WithMessage("Server is shutting down")
	}
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		fn()
	}()
	return nil
}

// serverVersion is GET /_synapse/admin/v1/server_version. Like Synapse's,
// it needs no token (admin UIs show it on their login page).
func (a *API) serverVersion(w http.ResponseWriter, r *http.Request) error {
	version := "AgentSpace"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		version += " " + bi.Main.Version
	}
	return writeJSON(w, http.StatusOK, map[string]string{"server_version": version})
}

// writeJSON writes v as a JSON response.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
	return nil
}

// empty is the {} of endpoints that return nothing.
var empty = struct{}{}

// writeError renders err as a Matrix error: RespErrors as they are,
// storage.ErrNotFound as M_NOT_FOUND, anything else as a logged 500.
func (a *API) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var respErr mautrix.RespError
	var maxBytes *http.MaxBytesError
	switch {
	case errors.As(err, &respErr):
		respErr.InternalError = ""
		if respErr.StatusCode == 0 {
			respErr.StatusCode = http.StatusBadRequest
		}
		if respErr.StatusCode >= 500 {
			a.log.ErrorContext(r.Context(), "admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		} else {
			a.log.DebugContext(r.Context(), "admin request refused", "method", r.Method, "path", r.URL.Path, "errcode", respErr.ErrCode, "error", respErr.Err)
		}
		respErr.Write(w)
	case errors.As(err, &maxBytes):
		mautrix.MTooLarge.WithMessage("Request body is larger than %d bytes", maxBytes.Limit).Write(w)
	case errors.Is(err, storage.ErrNotFound):
		mautrix.MNotFound.WithMessage("Not found").Write(w)
	case errors.Is(err, context.Canceled):
		mautrix.MUnknown.WithStatus(http.StatusServiceUnavailable).WithMessage("Request cancelled; please retry").Write(w)
	default:
		a.log.ErrorContext(r.Context(), "admin internal error", "method", r.Method, "path", r.URL.Path, "err", err)
		mautrix.MUnknown.WithMessage("Internal server error").Write(w)
	}
}

// Errors shared by the endpoints (Synapse's texts and codes).
var (
	errUserNotFound = mautrix.MNotFound.WithMessage("User not found")
	errRoomNotFound = mautrix.MNotFound.WithMessage("Room not found")
)

// unknownErr is a 400 with Synapse's default errcode M_UNKNOWN.
func unknownErr(format string, args ...any) error {
	return mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage(format, args...)
}

func invalidParam(format string, args ...any) error {
	return mautrix.MInvalidParam.WithMessage(format, args...)
}

func missingParam(format string, args ...any) error {
	return mautrix.RespError{ErrCode: "M_MISSING_PARAM", StatusCode: http.StatusBadRequest}.WithMessage(format, args...)
}

func badJSON(format string, args ...any) error {
	return mautrix.MBadJSON.WithMessage(format, args...)
}

// body is a request's JSON object, field by field, so each field's type can
// be checked the way Synapse does.
type body map[string]json.RawMessage

// readBody reads a JSON object body. allowEmpty accepts an empty body as {}.
func readBody(r *http.Request, allowEmpty bool) (body, error) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		var maxBytes *http.MaxBytesError
		if errors.As(err, &maxBytes) {
			return nil, maxBytes
		}
		return nil, mautrix.MNotJSON.WithMessage("Could not read request body")
	}
	if len(strings.TrimSpace(string(raw))) == 0 {
		if allowEmpty {
			return body{}, nil
		}
		return nil, mautrix.MNotJSON.WithMessage("Content not JSON.")
	}
	if !json.Valid(raw) {
		return nil, mautrix.MNotJSON.WithMessage("Content not JSON.")
	}
	var b body
	if err := json.Unmarshal(raw, &b); err != nil || b == nil {
		return nil, badJSON("Content must be a JSON object.")
	}
	return b, nil
}

// has reports whether the body has the field (even as null).
func (b body) has(key string) bool {
	_, ok := b[key]
	return ok
}

// isNull reports whether the field is present and null.
func (b body) isNull(key string) bool {
	v, ok := b[key]
	return ok && strings.TrimSpace(string(v)) == "null"
}

// bool reads an optional boolean field; wrong types are M_BAD_JSON.
func (b body) bool(key string, def bool) (bool, error) {
	v, ok := b[key]
	if !ok {
		return def, nil
	}
	var out bool
	if err := json.Unmarshal(v, &out); err != nil {
		return false, badJSON("Param '%s' must be a boolean, if given", key)
	}
	return out, nil
}

// string reads an optional string field (nil when absent or null).
func (b body) string(key string) (*string, error) {
	v, ok := b[key]
	if !ok || b.isNull(key) {
		return nil, nil
	}
	var out string
	if err := json.Unmarshal(v, &out); err != nil {
		return nil, badJSON("Param '%s' must be a string, if given", key)
	}
	return &out, nil
}

// int reads an optional integer field (nil when absent or null); floats,
// strings and other types are refused with errFn.
func (b body) int(key string, errFn func() error) (*int64, error) {
	v, ok := b[key]
	if !ok || b.isNull(key) {
		return nil, nil
	}
	s := strings.TrimSpace(string(v))
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return nil, errFn()
	}
	return &n, nil
}

// pathVar returns a path variable, percent-decoded (the router matches the
// encoded path).
func pathVar(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(mux.Vars(r)[name])
	if err != nil {
		return "", invalidParam("Invalid percent-encoding in %s", name)
	}
	return v, nil
}

// userIDVar returns the {userId} path variable, checked to be a user id.
func userIDVar(r *http.Request) (string, error) {
	v, err := pathVar(r, "userId")
	if err != nil {
		return "", err
	}
	if _, _, err := id.UserID(v).ParseAndValidateRelaxed(); err != nil {
		return "", invalidParam("Invalid user id")
	}
	return v, nil
}

// localUserIDVar is userIDVar for endpoints that only take local users.
func (a *API) localUserIDVar(r *http.Request, notLocal string) (string, error) {
	u, err := userIDVar(r)
	if err != nil {
		return "", err
	}
	if !a.isLocal(u) {
		return "", unknownErr("%s", notLocal)
	}
	return u, nil
}

// isLocal reports whether a user id is on this server.
func (a *API) isLocal(userID string) bool {
	_, server, ok := strings.Cut(userID, ":")
	return ok && server == a.cfg.ServerName
}

// validUserID checks a user id's syntax.
func validUserID(s string) bool {
	_, _, err := id.UserID(s).ParseAndValidateRelaxed()
	return err == nil && strings.HasPrefix(s, "@")
}

// validRoomID accepts "!opaque:server" and the domainless "!opaque" of room version 12.
func validRoomID(s string) bool {
	return len(s) >= 2 && s[0] == '!' && len(s) <= 255 && !strings.ContainsAny(s, " \x00")
}

// roomIDVar returns the {roomId} path variable, checked to be a room id.
func roomIDVar(r *http.Request) (string, error) {
	v, err := pathVar(r, "roomId")
	if err != nil {
		return "", err
	}
	if !validRoomID(v) {
		return "", unknownErr("%s is not a legal room ID", v)
	}
	return v, nil
}

// resolveRoom turns a {roomIdOrAlias} path variable into a room id (local
// aliases only: there is no federation).
func (a *API) resolveRoom(r *http.Request) (string, error) {
	v, err := pathVar(r, "roomIdOrAlias")
	if err != nil {
		return "", err
	}
	switch {
	case strings.HasPrefix(v, "!") && validRoomID(v):
		return v, nil
	case strings.HasPrefix(v, "#") && strings.Contains(v, ":"):
		al, err := a.db.AliasByName(r.Context(), v)
		if errors.Is(err, storage.ErrNotFound) {
			return "", mautrix.MNotFound.WithMessage("Room alias %s not found", v)
		} else if err != nil {
			return "", err
		}
		return al.RoomID, nil
	default:
		return "", unknownErr("%s was not legal room ID or room alias", v)
	}
}

// query parameters, parsed like Synapse's parse_integer / parse_boolean.

// queryInt reads a non-negative integer query parameter.
func queryInt(r *http.Request, name string, def int) (int, error) {
	v, ok := r.URL.Query()[name]
	if !ok || len(v) == 0 {
		return def, nil
	}
	n, err := strconv.Atoi(v[0])
	if err != nil {
		return 0, invalidParam("Query parameter %q must be an integer.", name)
	}
	if n < 0 {
		return 0, invalidParam("Query parameter %s must be a string representing a positive integer.", name)
	}
	return n, nil
}

// queryBool reads an optional "true"/"false" query parameter (nil when absent).
func queryBool(r *http.Request, name string) (*bool, error) {
	v, ok := r.URL.Query()[name]
	if !ok || len(v) == 0 {
		return nil, nil
	}
	switch v[0] {
	case "true":
		t := true
		return &t, nil
	case "false":
		f := false
		return &f, nil
	}
	return nil, invalidParam("Boolean query parameter %q must be one of ['true', 'false']", name)
}

// queryDir reads dir: "f" (default) or "b"; reports backwards.
func queryDir(r *http.Request) (bool, error) {
	switch d := r.URL.Query().Get("dir"); d {
	case "", "f":
		return false, nil
	case "b":
		return true, nil
	default:
		return false, invalidParam("Query parameter \"dir\" must be one of ['b', 'f']")
	}
}
