package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/gorilla/mux"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// Synapse's limits on profile fields.
const (
	maxDisplayNameLen = 256
	maxAvatarURLLen   = 1000
)

// profileJSON is a user's global profile.
type profileJSON struct {
	DisplayName *string `json:"displayname,omitempty"`
	AvatarURL   *string `json:"avatar_url,omitempty"`
}

// profileUser loads the user named by the {userId} path segment: 400 for
// something that is not a user id, 404 for no such local user.
func (a *API) profileUser(r *http.Request) (*storage.User, error) {
	userID, err := url.PathUnescape(mux.Vars(r)["userId"])
	if err != nil || !strings.HasPrefix(userID, "@") || !strings.Contains(userID, ":") {
		return nil, mautrix.MInvalidParam.WithMessage("Invalid user ID")
	}
	u, err := a.lookupUser(r.Context(), userID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mautrix.MNotFound.WithMessage("Profile was not found")
	} else if err != nil {
		return nil, fmt.Errorf("loading profile of %s: %w", userID, err)
	}
	return u, nil
}

// getProfile answers GET /profile/{userId}.
func (a *API) getProfile(w http.ResponseWriter, r *http.Request) error {
	u, err := a.profileUser(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, profileJSON{DisplayName: u.DisplayName, AvatarURL: u.AvatarURL})
}

// getProfileField answers GET /profile/{userId}/displayname|avatar_url; an
// unset field is {} (as Synapse answers).
func (a *API) getProfileField(w http.ResponseWriter, r *http.Request) error {
	u, err := a.profileUser(r)
	if err != nil {
		return err
	}
	p := profileJSON{DisplayName: u.DisplayName}
	if mux.Vars(r)["field"] == "avatar_url" {
		p = profileJSON{AvatarURL: u.AvatarURL}
	}
	return writeJSON(w, http.StatusOK, p)
}

// setProfileField answers PUT /profile/{userId}/displayname|avatar_url: the
// global profile changes and a new m.room.member join carries it into
// every room the user is in.
func (a *API) setProfileField(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	field := mux.Vars(r)["field"]
	u, err := a.profileUser(r)
	if err != nil {
		return err
	}
	if u.UserID != s.UserID {
		return mautrix.MForbidden.WithMessage("Cannot set another user's %s", field)
	}
	var body map[string]json.RawMessage
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	rawValue, ok := body[field]
	if !ok {
		return missingParam("Missing key '%s'", field)
	}
	var value *string
	if err := json.Unmarshal(rawValue, &value); err != nil {
		return mautrix.MInvalidParam.WithMessage("'%s' must be a string", field)
	}
	if value != nil && *value == "" {
		value = nil // "" removes the field
	}
	limit := maxDisplayNameLen
	if field == "avatar_url" {
		limit = maxAvatarURLLen
	}
	if value != nil && len(*value) > limit {
		return mautrix.MInvalidParam.WithMessage("'%s' is too long (max %d)", field, limit)
	}

	displayName, avatarURL := u.DisplayName, u.AvatarURL
	if field == "avatar_url" {
		avatarURL = value
	} else {
		displayName = value
	}
	ctx := r.Context()
	err = a.db.Write(ctx, func(tx *storage.Tx) error {
		return tx.SetProfile(ctx, s.UserID, displayName, avatarURL)
	})
	if err != nil {
		return fmt.Errorf("setting profile: %w", err)
	}
	if err := a.propagateProfile(context.WithoutCancel(ctx), s.UserID, displayName, avatarURL); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// propagateProfile sends a join with the new profile into every room the
// user is joined to, keeping the rest of their current member content.
// A room that refuses (e.g. power levels) is logged and skipped, as Synapse
// does: the global profile has changed either way.
func (a *API) propagateProfile(ctx context.Context, userID string, displayName, avatarURL *string) error {
	ms, err := a.db.MembershipsOfUser(ctx, userID, "join")
	if err != nil {
		return fmt.Errorf("listing joined rooms: %w", err)
	}
	for _, m := range ms {
		req := rooms.MembershipRequest{Sender: userID, Target: userID, Membership: "join", DisplayName: displayName, AvatarURL: avatarURL}
		if cur, err := a.rooms.CurrentStateEvent(ctx, m.RoomID, "m.room.member", userID); err == nil && cur != nil {
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
