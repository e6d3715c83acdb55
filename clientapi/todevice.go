package clientapi

import (
	"encoding/json"
	"net/http"
	"sort"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// Send-to-device messaging (spec: "Send-to-Device messaging"). Messages wait
// in the target device's inbox (table to_device) until a /sync with a later
// since token acknowledges them.

func (a *API) registerToDevice(rt routes) {
	rt.client("/sendToDevice/{eventType}/{txnId}", a.authed(a.handleSendToDevice), http.MethodPut)
}

type sendToDeviceRequest struct {
	Messages map[string]map[string]json.RawMessage `json:"messages"`
}

func (a *API) handleSendToDevice(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	eventType, err := mediaVar(r, "eventType")
	if err != nil {
		return err
	}
	txnID, err := mediaVar(r, "txnId")
	if err != nil {
		return err
	}
	if eventType == "" || txnID == "" {
		return badParam("eventType and txnId must not be empty")
	}
	var req sendToDeviceRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if req.Messages == nil {
		return missingParam("Missing messages")
	}
	// Validate everything before writing anything.
	users := make([]string, 0, len(req.Messages))
	for userID, byDevice := range req.Messages {
		uid := id.UserID(userID)
		if _, _, err := uid.Parse(); err != nil {
			return badParam("Invalid user ID %q", userID)
		}
		for deviceID, content := range byDevice {
			if deviceID == "" {
				return badParam("Empty device ID for %s", userID)
			}
			if !isJSONObject(content) {
				return mautrix.MBadJSON.WithMessage("Message content for %s/%s must be a JSON object", userID, deviceID)
			}
		}
		users = append(users, userID)
	}
	sort.Strings(users)

	ctx := r.Context()
	// The transaction id is scoped by event type too, as Synapse scopes it
	// by request path.
	txnKey, _ := json.Marshal([]string{eventType, txnID})
	type recipient struct {
		user, device string
		content      json.RawMessage
	}
	var sent []recipient // for appservices that receive to-device messages
	err = a.db.Write(ctx, func(tx *storage.Tx) error {
		sent = sent[:0]
		fresh, err := tx.ClaimToDeviceTxn(ctx, s.UserID, s.DeviceID, string(txnKey))
		if err != nil || !fresh {
			return err // a retry: the messages went out the first time
		}
		var last storage.StreamPos
		var woken []string
		for _, userID := range users {
			_, server, _ := id.UserID(userID).Parse()
			if server != a.cfg.ServerName {
				continue // we do not federate; like an unreachable server, drop silently
			}
			byDevice := req.Messages[userID]
			deviceIDs := make([]string, 0, len(byDevice))
			for d := range byDevice {
				deviceIDs = append(deviceIDs, d)
			}
			sort.Strings(deviceIDs)
			delivered := false
			for _, d := range deviceIDs {
				var only []string
				if d != "*" {
					only = []string{d}
				}
				// Messages to unknown devices are dropped, as Synapse does.
				targets, err := tx.DeviceIDsOfUser(ctx, userID, only)
				if err != nil {
					return err
				}
				for _, target := range targets {
					pos, err := tx.NextPos(ctx)
					if err != nil {
						return err
					}
					msg := storage.ToDeviceMessage{Sender: s.UserID, Type: eventType, Content: byDevice[d]}
					if err := tx.InsertToDevice(ctx, pos, userID, target, msg); err != nil {
						return err
					}
					last, delivered = pos, true
					sent = append(sent, recipient{userID, target, byDevice[d]})
				}
			}
			if delivered {
				woken = append(woken, userID)
			}
		}
		if last > 0 {
			tx.OnCommit(func() { a.rooms.Notifier().Advance(last, rooms.Wake{Users: woken}) })
		}
		return nil
	})
	if err != nil {
		return err
	}
	if a.appservices != nil {
		for _, rc := range sent {
			a.appservices.PushToDevice(rc.user, rc.device, s.UserID, eventType, rc.content)
		}
	}
	return writeJSON(w, http.StatusOK, empty)
}

// isJSONObject reports whether raw (already valid JSON) is an object.
func isJSONObject(raw json.RawMessage) bool {
	return strings.HasPrefix(strings.TrimSpace(string(raw)), "{")
}
