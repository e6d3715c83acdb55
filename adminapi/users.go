package adminapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// User endpoints: https://element-hq.github.io/synapse/latest/admin_api/user_admin_api.html

// Limits Synapse applies to profile fields.
const (
	maxDisplayNameLen = 256
	maxAvatarURLLen   = 1000
	maxPasswordLen    = 512
	maxUserIDLen      = 255
)

// userTypes are the user_type values Synapse accepts.
var userTypes = map[string]bool{"bot": true, "support": true}

// isAdmin reports a user's effective admin status (flag or configuration).
func (a *API) isAdmin(u *storage.User) bool {
	return u.IsAdmin || a.cfg.IsAdminLocalpart(u.Localpart)
}

// userListEntry is one user of GET /_synapse/admin/v2/users.
type userListEntry struct {
	Name         string  `json:"name"`
	UserType     *string `json:"user_type"`
	IsGuest      bool    `json:"is_guest"`
	Admin        bool    `json:"admin"`
	Deactivated  bool    `json:"deactivated"`
	ShadowBanned bool    `json:"shadow_banned"`
	DisplayName  *string `json:"displayname"`
	AvatarURL    *string `json:"avatar_url"`
	CreationTS   int64   `json:"creation_ts"` // milliseconds, as Synapse's list
	Erased       bool    `json:"erased"`
	LastSeenTS   *int64  `json:"last_seen_ts"`
	Locked       bool    `json:"locked"`
}

// userDetails is GET /_synapse/admin/v2/users/{userId}.
type userDetails struct {
	Name                    string  `json:"name"`
	DisplayName             *string `json:"displayname"`
	ThreePIDs               []any   `json:"threepids"`
	AvatarURL               *string `json:"avatar_url"`
	IsGuest                 bool    `json:"is_guest"`
	Admin                   bool    `json:"admin"`
	Deactivated             bool    `json:"deactivated"`
	Erased                  bool    `json:"erased"`
	ShadowBanned            bool    `json:"shadow_banned"`
	CreationTS              int64   `json:"creation_ts"` // seconds, as Synapse's user details
	LastSeenTS              *int64  `json:"last_seen_ts"`
	AppserviceID            *string `json:"appservice_id"`
	ConsentServerNoticeSent *string `json:"consent_server_notice_sent"`
	ConsentVersion          *string `json:"consent_version"`
	ConsentTS               *int64  `json:"consent_ts"`
	ExternalIDs             []any   `json:"external_ids"`
	UserType                *string `json:"user_type"`
	Locked                  bool    `json:"locked"`
	Suspended               bool    `json:"suspended"`
}

func (a *API) details(u *storage.AdminUser) userDetails {
	return userDetails{
		Name: u.UserID, DisplayName: u.DisplayName, ThreePIDs: []any{}, AvatarURL: u.AvatarURL, IsGuest: u.IsGuest,
		Admin: a.isAdmin(&u.User), Deactivated: u.Deactivated, Erased: u.Erased, CreationTS: u.CreatedTS / 1000,
		LastSeenTS: u.LastSeenTS, AppserviceID: u.AppserviceID, ExternalIDs: []any{}, UserType: u.UserType,
	}
}

var userOrderValues = []string{"name", "displayname", "is_guest", "admin", "deactivated", "user_type",
	"avatar_url", "shadow_banned", "creation_ts", "last_seen_ts", "locked"}

// listUsers is GET /_synapse/admin/v2/users: deactivated=true adds the
// deactivated users, who are left out otherwise.
func (a *API) listUsers(w http.ResponseWriter, r *http.Request) error {
	return a.listUsersVersion(w, r, false)
}

// listUsersV3 is GET /_synapse/admin/v3/users: the same, except that
// deactivated filters (true: only them, false: none of them, absent: all).
func (a *API) listUsersV3(w http.ResponseWriter, r *http.Request) error {
	return a.listUsersVersion(w, r, true)
}

func (a *API) listUsersVersion(w http.ResponseWriter, r *http.Request, v3 bool) error {
	q := storage.UserListQuery{AdminLocalparts: a.cfg.AdminUsers}
	var err error
	if q.From, err = queryInt(r, "from", 0); err != nil {
		return err
	}
	if q.Limit, err = queryInt(r, "limit", 100); err != nil {
		return err
	}
	params := r.URL.Query()
	q.UserID, q.Name = params.Get("user_id"), params.Get("name")
	guests, err := queryBool(r, "guests")
	if err != nil {
		return err
	}
	q.ExcludeGuests = guests != nil && !*guests
	deactivated, err := queryBool(r, "deactivated")
	if err != nil {
		return err
	}
	switch {
	case v3:
		q.Deactivated = deactivated
	case deactivated == nil || !*deactivated: // v2: deactivated=true includes them, else they are left out
		f := false
		q.Deactivated = &f
	}
	if q.Admins, err = queryBool(r, "admins"); err != nil {
		return err
	}
	if _, err := queryBool(r, "locked"); err != nil { // nobody is locked: accepted, filters nothing
		return err
	}
	q.OrderBy = params.Get("order_by")
	if _, ok := params["order_by"]; ok {
		if _, known := storage.UserOrderColumns[q.OrderBy]; !known {
			return invalidParam("Query parameter \"order_by\" must be one of %v", userOrderValues)
		}
	}
	if q.Backwards, err = queryDir(r); err != nil {
		return err
	}
	q.NotUserTypes = params["not_user_type"]
	for _, v := range params["user_types"] { // AgentSpace extension: keep only these types
		q.UserTypes = append(q.UserTypes, strings.Split(v, ",")...)
	}
	users, total, err := a.db.ListUsers(r.Context(), q)
	if err != nil {
		return err
	}
	out := make([]userListEntry, 0, len(users))
	for _, u := range users {
		out = append(out, userListEntry{
			Name: u.UserID, UserType: u.UserType, IsGuest: u.IsGuest, Admin: a.isAdmin(&u.User), Deactivated: u.Deactivated,
			DisplayName: u.DisplayName, AvatarURL: u.AvatarURL, CreationTS: u.CreatedTS, Erased: u.Erased, LastSeenTS: u.LastSeenTS,
		})
	}
	resp := map[string]any{"users": out, "total": total}
	if q.From+q.Limit < total {
		resp["next_token"] = strconv.Itoa(q.From + len(users))
	}
	return writeJSON(w, http.StatusOK, resp)
}

// getUser is GET /_synapse/admin/v2/users/{userId}.
func (a *API) getUser(w http.ResponseWriter, r *http.Request) error {
	userID, err := a.localUserIDVar(r, "Can only look up local users")
	if err != nil {
		return err
	}
	u, err := a.db.AdminUserByID(r.Context(), userID)
	if errors.Is(err, storage.ErrNotFound) {
		return errUserNotFound
	} else if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, a.details(u))
}

var localpartChars = regexp.MustCompile(`^[a-z0-9._=\-/+]+$`)

// checkNewLocalpart applies the rules for a new account's localpart
// (Synapse's check_username): the spec's grammar, no leading underscore
// (appservices' namespace) and not all digits (guests').
func (a *API) checkNewLocalpart(localpart string) error {
	if !localpartChars.MatchString(localpart) {
		return mautrix.MInvalidUsername.WithMessage("User ID can only contain characters a-z, 0-9, or '=_-./+'")
	}
	if strings.HasPrefix(localpart, "_") {
		return mautrix.MInvalidUsername.WithMessage("User ID may not begin with _")
	}
	if strings.Trim(localpart, "0123456789") == "" {
		return mautrix.MInvalidUsername.WithMessage("Numeric user IDs are reserved for guest users.")
	}
	if len("@"+localpart+":"+a.cfg.ServerName) > maxUserIDLen {
		return mautrix.MInvalidUsername.WithMessage("User ID may not be longer than %d characters", maxUserIDLen)
	}
	return nil
}

// profileField reads displayname or avatar_url: nil means "remove" (null or "").
func profileField(b body, key string, limit int) (*string, error) {
	if b.isNull(key) {
		return nil, nil
	}
	v, err := b.string(key)
	if err != nil {
		return nil, err
	}
	if v != nil && *v == "" {
		return nil, nil
	}
	if v != nil && len(*v) > limit {
		return nil, invalidParam("'%s' is too long (max %d)", key, limit)
	}
	return v, nil
}

// putUser is PUT /_synapse/admin/v2/users/{userId}: create (201) or modify (200).
func (a *API) putUser(w http.ResponseWriter, r *http.Request) error {
	caller := callerFrom(r.Context())
	userID, err := userIDVar(r)
	if err != nil {
		return err
	}
	b, err := readBody(r, false)
	if err != nil {
		return err
	}
	if !a.isLocal(userID) {
		return unknownErr("This endpoint can only be used with local users")
	}
	for _, key := range []string{"threepids", "external_ids"} {
		var list []json.RawMessage
		if b.has(key) && !b.isNull(key) {
			if err := json.Unmarshal(b[key], &list); err != nil {
				return badJSON("Param '%s' must be a list, if given", key)
			}
			if len(list) > 0 {
				return invalidParam("%s are not supported by this server", key)
			}
		}
	}
	var userType *string
	if b.has("user_type") {
		if userType, err = b.string("user_type"); err != nil {
			return err
		}
		if userType != nil && !userTypes[*userType] {
			return unknownErr("Invalid user type")
		}
	}
	setAdmin, err := b.bool("admin", false)
	if err != nil {
		return err
	}
	password, err := b.string("password")
	if err != nil || (password != nil && len(*password) > maxPasswordLen) {
		return unknownErr("Invalid password")
	}
	logoutDevices, err := b.bool("logout_devices", true)
	if err != nil {
		return unknownErr("'logout_devices' parameter is not of type boolean")
	}
	deactivate, err := b.bool("deactivated", false)
	if err != nil {
		return unknownErr("'deactivated' parameter is not of type boolean")
	}
	lock, err := b.bool("locked", false)
	if err != nil {
		return unknownErr("'locked' parameter is not of type boolean")
	}
	if deactivate && lock {
		return unknownErr("An user can't be deactivated and locked")
	}
	if lock {
		return invalidParam("Locking users is not supported by this server")
	}
	displayName, err := profileField(b, "displayname", maxDisplayNameLen)
	if err != nil {
		return err
	}
	avatarURL, err := profileField(b, "avatar_url", maxAvatarURLLen)
	if err != nil {
		return err
	}
	if avatarURL != nil && !strings.HasPrefix(*avatarURL, "mxc://") {
		return invalidParam("avatar_url must be an mxc:// URI")
	}
	ctx := r.Context()
	existing, err := a.db.AdminUserByID(ctx, userID)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	var hash string
	if password != nil {
		if hash, err = a.hash(*password); err != nil {
			return err
		}
	}

	if existing == nil { // create
		localpart := strings.TrimPrefix(userID[:strings.IndexByte(userID, ':')], "@")
		if err := a.checkNewLocalpart(localpart); err != nil {
			return err
		}
		if displayName == nil {
			displayName = &localpart // Synapse's default display name
		}
		err := a.db.Write(ctx, func(tx *storage.Tx) error {
			taken, err := tx.LocalpartTaken(ctx, localpart)
			if err != nil {
				return err
			}
			if taken {
				return mautrix.MUserInUse.WithMessage("User ID already taken.")
			}
			return tx.InsertUser(ctx, &storage.User{
				UserID: userID, Localpart: localpart, PasswordHash: hash, CreatedTS: time.Now().UnixMilli(),
				IsAdmin: setAdmin, UserType: userType, DisplayName: displayName, AvatarURL: avatarURL,
			})
		})
		if err != nil {
			return err
		}
		u, err := a.db.AdminUserByID(ctx, userID)
		if err != nil {
			return err
		}
		a.log.InfoContext(ctx, "admin created user", "user_id", userID, "by", caller.UserID)
		return writeJSON(w, http.StatusCreated, a.details(u))
	}

	// modify
	if b.has("displayname") || b.has("avatar_url") {
		newName, newAvatar := existing.DisplayName, existing.AvatarURL
		if b.has("displayname") {
			newName = displayName
		}
		if b.has("avatar_url") {
			newAvatar = avatarURL
		}
		if err := a.setProfile(ctx, userID, newName, newAvatar); err != nil {
			return err
		}
	}
	if b.has("admin") && setAdmin != existing.IsAdmin {
		if userID == caller.UserID && !setAdmin {
			return unknownErr("You may not demote yourself.")
		}
		if err := a.db.Write(ctx, func(tx *storage.Tx) error { return tx.SetAdmin(ctx, userID, setAdmin) }); err != nil {
			return err
		}
	}
	if password != nil {
		if err := a.setPassword(ctx, caller, userID, hash, logoutDevices); err != nil {
			return err
		}
	}
	if b.has("deactivated") {
		switch {
		case deactivate && !existing.Deactivated:
			if err := a.deactivate(ctx, userID, false); err != nil {
				return err
			}
		case !deactivate && existing.Deactivated:
			if err := a.db.Write(ctx, func(tx *storage.Tx) error { return tx.SetDeactivated(ctx, userID, false) }); err != nil {
				return err
			}
			if password != nil { // deactivation cleared it; the new one applies to the reactivated account
				if err := a.db.Write(ctx, func(tx *storage.Tx) error { return tx.SetPasswordHash(ctx, userID, hash) }); err != nil {
					return err
				}
			}
		}
	}
	if b.has("user_type") {
		if err := a.db.Write(ctx, func(tx *storage.Tx) error { return tx.SetUserType(ctx, userID, userType) }); err != nil {
			return err
		}
	}
	u, err := a.db.AdminUserByID(ctx, userID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, a.details(u))
}

// setProfile changes the global profile and sends it into every joined
// room, keeping the rest of each member event (as the client API does).
func (a *API) setProfile(ctx context.Context, userID string, displayName, avatarURL *string) error {
	if err := a.db.Write(ctx, func(tx *storage.Tx) error { return tx.SetProfile(ctx, userID, displayName, avatarURL) }); err != nil {
		return fmt.Errorf("setting profile: %w", err)
	}
	ctx = context.WithoutCancel(ctx)
	ms, err := a.db.MembershipsOfUser(ctx, userID, spec.Join)
	if err != nil {
		return fmt.Errorf("listing joined rooms: %w", err)
	}
	for _, m := range ms {
		req := rooms.MembershipRequest{Sender: userID, Target: userID, Membership: spec.Join, DisplayName: displayName, AvatarURL: avatarURL}
		if cur, err := a.rooms.CurrentStateEvent(ctx, m.RoomID, spec.MRoomMember, userID); err == nil && cur != nil {
			var content map[string]json.RawMessage
			if json.Unmarshal(cur.Content(), &content) == nil {
				for _, k := range []string{"membership", "displayname", "avatar_url", "reason"} {
					delete(content, k)
				}
				req.Extra = content
			}
		}
		if _, err := a.rooms.ChangeMembership(ctx, m.RoomID, req); err != nil {
			a.log.WarnContext(ctx, "updating profile in room failed", "user_id", userID, "room_id", m.RoomID, "err", err)
		}
	}
	return nil
}

// setPassword stores a new password hash and, with logoutDevices, logs the
// user out everywhere (except the caller's own session when admins reset
// their own password).
func (a *API) setPassword(ctx context.Context, caller *Caller, userID, hash string, logoutDevices bool) error {
	return a.db.Write(ctx, func(tx *storage.Tx) error {
		if err := tx.SetPasswordHash(ctx, userID, hash); err != nil {
			return err
		}
		if !logoutDevices {
			return nil
		}
		ids, err := tx.DeviceIDsOfUser(ctx, userID, nil)
		if err != nil {
			return err
		}
		keep := ""
		if caller.UserID == userID {
			keep = caller.DeviceID
		}
		var drop []string
		for _, d := range ids {
			if d != keep || keep == "" {
				drop = append(drop, d)
			}
		}
		if err := a.deleteDevicesTx(ctx, tx, userID, drop); err != nil {
			return err
		}
		if caller.UserID == userID {
			return tx.DeleteUserTokensExcept(ctx, userID, caller.TokenHash)
		}
		return tx.DeleteUserTokens(ctx, userID)
	})
}

// deleteDevicesTx removes devices with their tokens and keys and records
// one device-list change, waking whoever shares a room with the user.
func (a *API) deleteDevicesTx(ctx context.Context, tx *storage.Tx, userID string, deviceIDs []string) error {
	if len(deviceIDs) == 0 {
		return nil
	}
	for _, d := range deviceIDs {
		if err := tx.DeleteDevice(ctx, userID, d); err != nil {
			return err
		}
	}
	pos, err := tx.MarkDeviceListChanged(ctx, userID)
	if err != nil {
		return err
	}
	n := a.rooms.Notifier()
	tx.OnCommit(func() { n.Advance(pos, rooms.Wake{ShareRoomsWith: []string{userID}}) })
	return nil
}

// deactivate closes an account for good: no password, no devices, no
// tokens, out of every room (pending invites rejected); with erase also no
// profile, and marked erased.
func (a *API) deactivate(ctx context.Context, userID string, erase bool) error {
	err := a.db.Write(ctx, func(tx *storage.Tx) error {
		if err := tx.SetDeactivated(ctx, userID, true); err != nil {
			return err
		}
		if erase {
			if err := tx.SetProfile(ctx, userID, nil, nil); err != nil {
				return err
			}
			if err := tx.SetErased(ctx, userID, true); err != nil {
				return err
			}
		}
		ids, err := tx.DeviceIDsOfUser(ctx, userID, nil)
		if err != nil {
			return err
		}
		if err := a.deleteDevicesTx(ctx, tx, userID, ids); err != nil {
			return err
		}
		return tx.DeleteUserTokens(ctx, userID)
	})
	if err != nil {
		return fmt.Errorf("deactivating %s: %w", userID, err)
	}
	// The account is closed whatever happens below; leaving goes on even
	// if the client hangs up, and a room that refuses is logged.
	ctx = context.WithoutCancel(ctx)
	ms, err := a.db.MembershipsOfUser(ctx, userID, spec.Join, spec.Invite, spec.Knock)
	if err != nil {
		return fmt.Errorf("listing rooms to leave: %w", err)
	}
	for _, m := range ms {
		if _, err := a.rooms.ChangeMembership(ctx, m.RoomID, rooms.MembershipRequest{Sender: userID, Target: userID, Membership: spec.Leave}); err != nil {
			a.log.WarnContext(ctx, "deactivation: leaving room failed", "user_id", userID, "room_id", m.RoomID, "err", err)
		}
	}
	return nil
}

// resetPassword is POST /_synapse/admin/v1/reset_password/{userId}.
func (a *API) resetPassword(w http.ResponseWriter, r *http.Request) error {
	userID, err := userIDVar(r)
	if err != nil {
		return err
	}
	b, err := readBody(r, false)
	if err != nil {
		return err
	}
	if !b.has("new_password") {
		return missingParam("Missing params: ['new_password']")
	}
	pw, err := b.string("new_password")
	if err != nil || pw == nil || *pw == "" || len(*pw) > maxPasswordLen {
		return unknownErr("Invalid password")
	}
	logoutDevices, err := b.bool("logout_devices", true)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if !a.isLocal(userID) {
		return errUserNotFound
	}
	if _, err := a.db.UserByID(ctx, userID); errors.Is(err, storage.ErrNotFound) {
		return errUserNotFound
	} else if err != nil {
		return err
	}
	hash, err := a.hash(*pw)
	if err != nil {
		return err
	}
	if err := a.setPassword(ctx, callerFrom(ctx), userID, hash, logoutDevices); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// deactivateUser is POST /_synapse/admin/v1/deactivate/{userId}.
func (a *API) deactivateUser(w http.ResponseWriter, r *http.Request) error {
	userID, err := a.localUserIDVar(r, "Can only deactivate local users")
	if err != nil {
		return err
	}
	ctx := r.Context()
	if _, err := a.db.UserByID(ctx, userID); errors.Is(err, storage.ErrNotFound) {
		return errUserNotFound
	} else if err != nil {
		return err
	}
	b, err := readBody(r, true)
	if err != nil {
		return err
	}
	erase, err := b.bool("erase", false)
	if err != nil {
		return err
	}
	if err := a.deactivate(ctx, userID, erase); err != nil {
		return err
	}
	a.log.InfoContext(ctx, "admin deactivated user", "user_id", userID, "by", callerFrom(ctx).UserID, "erase", erase)
	return writeJSON(w, http.StatusOK, map[string]string{"id_server_unbind_result": "no-support"})
}

// getUserAdmin is GET /_synapse/admin/v1/users/{userId}/admin.
func (a *API) getUserAdmin(w http.ResponseWriter, r *http.Request) error {
	userID, err := a.localUserIDVar(r, "Only local users can be admins of this homeserver")
	if err != nil {
		return err
	}
	u, err := a.db.UserByID(r.Context(), userID)
	if errors.Is(err, storage.ErrNotFound) {
		return errUserNotFound
	} else if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]bool{"admin": a.isAdmin(u)})
}

// putUserAdmin is PUT /_synapse/admin/v1/users/{userId}/admin. Users listed
// in admin_users stay admins whatever the flag says.
func (a *API) putUserAdmin(w http.ResponseWriter, r *http.Request) error {
	caller := callerFrom(r.Context())
	userID, err := userIDVar(r)
	if err != nil {
		return err
	}
	b, err := readBody(r, false)
	if err != nil {
		return err
	}
	if !b.has("admin") {
		return missingParam("Missing params: ['admin']")
	}
	if !a.isLocal(userID) {
		return unknownErr("Only local users can be admins of this homeserver")
	}
	var set bool
	if err := json.Unmarshal(b["admin"], &set); err != nil {
		return badJSON("Param 'admin' must be a boolean")
	}
	if userID == caller.UserID && !set {
		return unknownErr("You may not demote yourself.")
	}
	ctx := r.Context()
	if _, err := a.db.UserByID(ctx, userID); errors.Is(err, storage.ErrNotFound) {
		return errUserNotFound
	} else if err != nil {
		return err
	}
	if err := a.db.Write(ctx, func(tx *storage.Tx) error { return tx.SetAdmin(ctx, userID, set) }); err != nil {
		return err
	}
	a.log.InfoContext(ctx, "admin flag changed", "user_id", userID, "admin", set, "by", caller.UserID)
	return writeJSON(w, http.StatusOK, empty)
}

// whoisResponse is the body of the whois endpoints.
func (a *API) whoisResponse(ctx context.Context, userID string) (map[string]any, error) {
	ds, err := a.db.DevicesOfUser(ctx, userID)
	if err != nil {
		return nil, err
	}
	devices := map[string]any{}
	for _, d := range ds {
		conns := []map[string]any{}
		if d.LastSeenIP != "" || d.LastSeenTS > 0 {
			conns = append(conns, map[string]any{"ip": d.LastSeenIP, "last_seen": d.LastSeenTS, "user_agent": nil})
		}
		devices[d.DeviceID] = map[string]any{"sessions": []map[string]any{{"connections": conns}}}
	}
	return map[string]any{"user_id": userID, "devices": devices}, nil
}

// whois is GET /_synapse/admin/v1/whois/{userId}.
func (a *API) whois(w http.ResponseWriter, r *http.Request) error {
	userID, err := a.localUserIDVar(r, "Can only whois a local user")
	if err != nil {
		return err
	}
	resp, err := a.whoisResponse(r.Context(), userID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, resp)
}

// clientWhois is the spec's GET /_matrix/client/v3/admin/whois/{userId}:
// admins may ask about anyone, users about themselves.
func (a *API) clientWhois(w http.ResponseWriter, r *http.Request) error {
	c, err := a.auth(r)
	if err != nil {
		return err
	}
	if c.IsGuest {
		return mautrix.RespError{ErrCode: "M_GUEST_ACCESS_FORBIDDEN", StatusCode: http.StatusForbidden, Err: "Guest access not allowed"}
	}
	userID, err := pathVar(r, "userId")
	if err != nil {
		return err
	}
	if userID != c.UserID && !c.IsAdmin {
		return errNotAdmin
	}
	if !validUserID(userID) {
		return invalidParam("Invalid user id")
	}
	if !a.isLocal(userID) {
		return unknownErr("Can only whois a local user")
	}
	resp, err := a.whoisResponse(r.Context(), userID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, resp)
}

// userJoinedRooms is GET /_synapse/admin/v1/users/{userId}/joined_rooms.
// Like Synapse's, it answers an empty list for an unknown user.
func (a *API) userJoinedRooms(w http.ResponseWriter, r *http.Request) error {
	userID, err := userIDVar(r)
	if err != nil {
		return err
	}
	ms, err := a.db.MembershipsOfUser(r.Context(), userID, spec.Join)
	if err != nil {
		return err
	}
	ids := make([]string, 0, len(ms))
	for _, m := range ms {
		ids = append(ids, m.RoomID)
	}
	return writeJSON(w, http.StatusOK, map[string]any{"joined_rooms": ids, "total": len(ids)})
}

// userMemberships is GET /_synapse/admin/v1/users/{userId}/memberships.
func (a *API) userMemberships(w http.ResponseWriter, r *http.Request) error {
	userID, err := userIDVar(r)
	if err != nil {
		return err
	}
	ms, err := a.db.MembershipsOfUser(r.Context(), userID)
	if err != nil {
		return err
	}
	out := make(map[string]string, len(ms))
	for _, m := range ms {
		out[m.RoomID] = m.Membership
	}
	return writeJSON(w, http.StatusOK, map[string]any{"memberships": out})
}

// loginAsUser is POST /_synapse/admin/v1/users/{userId}/login: a new access
// token for the user, on no device (it appears in no device list), expiring
// at valid_until_ms when given. Logging out with it revokes it.
func (a *API) loginAsUser(w http.ResponseWriter, r *http.Request) error {
	caller := callerFrom(r.Context())
	userID, err := userIDVar(r)
	if err != nil {
		return err
	}
	if !a.isLocal(userID) {
		return unknownErr("Only local users can be logged in as")
	}
	b, err := readBody(r, true)
	if err != nil {
		return err
	}
	validUntil, err := b.int("valid_until_ms", func() error { return unknownErr("'valid_until_ms' parameter must be an int") })
	if err != nil {
		return err
	}
	if userID == caller.UserID {
		return unknownErr("Cannot use admin API to login as self")
	}
	ctx := r.Context()
	if _, err := a.db.UserByID(ctx, userID); errors.Is(err, storage.ErrNotFound) {
		return errUserNotFound
	} else if err != nil {
		return err
	}
	token := storage.NewToken("syt_")
	at := &storage.AccessToken{TokenHash: storage.HashToken(token), UserID: userID, DeviceID: "", CreatedTS: time.Now().UnixMilli()}
	if validUntil != nil {
		at.ExpiresTS = max(*validUntil, 1)
	}
	if err := a.db.Write(ctx, func(tx *storage.Tx) error { return tx.InsertAccessToken(ctx, at) }); err != nil {
		return err
	}
	a.log.InfoContext(ctx, "admin logged in as user", "user_id", userID, "by", caller.UserID)
	return writeJSON(w, http.StatusOK, map[string]string{"access_token": token})
}

// usernameAvailable is GET /_synapse/admin/v1/username_available: the
// client API's /register/available, also when registration is closed.
func (a *API) usernameAvailable(w http.ResponseWriter, r *http.Request) error {
	username := r.URL.Query().Get("username")
	if username == "" {
		return missingParam("Missing string query parameter 'username'")
	}
	if err := a.checkNewLocalpart(username); err != nil {
		return err
	}
	taken, err := a.db.LocalpartTaken(r.Context(), username)
	if err != nil {
		return err
	}
	if taken {
		return mautrix.MUserInUse.WithMessage("User ID already taken.")
	}
	return writeJSON(w, http.StatusOK, map[string]bool{"available": true})
}
