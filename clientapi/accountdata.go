package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/gorilla/mux"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// serverControlledAccountData are the account data types only the server
// writes: m.fully_read through /read_markers and /receipt, m.push_rules
// through the push rules API.
var serverControlledAccountData = map[string]bool{
	receiptFullyRead: true,
	"m.push_rules":   true,
}

// accountDataTarget decodes and checks the path of an account data request:
// only the user themself may use it, and a room ID must look like one.
func accountDataTarget(r *http.Request) (userID, roomID, dataType string, err error) {
	s := sessionFrom(r.Context())
	if userID, err = ephVar(r, "userId"); err != nil {
		return
	}
	if dataType, err = ephVar(r, "type"); err != nil {
		return
	}
	if _, inRoom := mux.Vars(r)["roomId"]; inRoom {
		if roomID, err = ephVar(r, "roomId"); err != nil {
			return
		}
		if !strings.HasPrefix(roomID, "!") || !strings.Contains(roomID, ":") {
			err = badParam("%s is not a valid room ID", roomID)
			return
		}
	}
	if userID != s.UserID {
		err = mautrix.MForbidden.WithMessage("Cannot access the account data of other users")
	}
	return
}

// getAccountData answers GET /user/{userId}/account_data/{type} and its
// per-room variant (https://spec.matrix.org/v1.12/client-server-api/#client-config).
// m.push_rules is the user's full current rule set even when never stored,
// as in Synapse.
func (a *API) getAccountData(w http.ResponseWriter, r *http.Request) error {
	userID, roomID, dataType, err := accountDataTarget(r)
	if err != nil {
		return err
	}
	if roomID == "" && dataType == "m.push_rules" {
		content, err := a.pushRulesContent(r.Context(), userID)
		if err != nil {
			return err
		}
		return ephWriteRaw(w, content)
	}
	content, err := a.db.AccountData(r.Context(), userID, roomID, dataType)
	if err != nil {
		if roomID != "" {
			return ephNotFound(err, "Room account data not found")
		}
		return ephNotFound(err, "Account data not found")
	}
	return ephWriteRaw(w, content)
}

// putAccountData answers PUT /user/{userId}/account_data/{type} and its
// per-room variant. Server-controlled types are refused with 405 M_BAD_JSON,
// as the spec says.
func (a *API) putAccountData(w http.ResponseWriter, r *http.Request) error {
	userID, roomID, dataType, err := accountDataTarget(r)
	if err != nil {
		return err
	}
	if serverControlledAccountData[dataType] {
		return mautrix.MBadJSON.WithStatus(http.StatusMethodNotAllowed).WithMessage("Cannot set %s through this API", dataType)
	}
	content, err := readJSONObject(r)
	if err != nil {
		return err
	}
	if err := a.setAccountData(r.Context(), userID, roomID, dataType, content); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// setAccountData stores account data and wakes the user's /sync.
func (a *API) setAccountData(ctx context.Context, userID, roomID, dataType string, content json.RawMessage) error {
	err := a.db.SetAccountData(ctx, userID, roomID, dataType, content, func(pos storage.StreamPos) {
		a.rooms.Notifier().Advance(pos, rooms.Wake{Users: []string{userID}})
	})
	if err != nil {
		return fmt.Errorf("storing account data %s: %w", dataType, err)
	}
	return nil
}

// ephWriteRaw writes an already encoded JSON body with status 200.
func ephWriteRaw(w http.ResponseWriter, body json.RawMessage) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	return nil
}

// ephNotFound turns storage.ErrNotFound into M_NOT_FOUND with msg and passes
// other errors on.
func ephNotFound(err error, msg string) error {
	if errors.Is(err, storage.ErrNotFound) {
		return mautrix.MNotFound.WithMessage("%s", msg)
	}
	return err
}
