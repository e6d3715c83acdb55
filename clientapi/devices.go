package clientapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

// maxDeviceDisplayName is Synapse's limit on device display names.
const maxDeviceDisplayName = 100

// deviceJSON is a device as GET /devices shows it.
type deviceJSON struct {
	DeviceID    string  `json:"device_id"`
	DisplayName *string `json:"display_name,omitempty"`
	LastSeenIP  string  `json:"last_seen_ip,omitempty"`
	LastSeenTS  int64   `json:"last_seen_ts,omitempty"`
}

func toDeviceJSON(d *storage.Device) deviceJSON {
	return deviceJSON{DeviceID: d.DeviceID, DisplayName: d.DisplayName, LastSeenIP: d.LastSeenIP, LastSeenTS: d.LastSeenTS}
}

// deviceIDVar is the {deviceId} path segment, unescaped.
func deviceIDVar(r *http.Request) (string, error) {
	id, err := url.PathUnescape(mux.Vars(r)["deviceId"])
	if err != nil || id == "" {
		return "", mautrix.MInvalidParam.WithMessage("Invalid device ID")
	}
	return id, nil
}

// listDevices answers GET /devices.
func (a *API) listDevices(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ds, err := a.db.DevicesOfUser(r.Context(), s.UserID)
	if err != nil {
		return fmt.Errorf("listing devices: %w", err)
	}
	out := make([]deviceJSON, 0, len(ds))
	for _, d := range ds {
		out = append(out, toDeviceJSON(d))
	}
	return writeJSON(w, http.StatusOK, map[string]any{"devices": out})
}

// getDevice answers GET /devices/{deviceId}.
func (a *API) getDevice(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	id, err := deviceIDVar(r)
	if err != nil {
		return err
	}
	d, err := a.db.DeviceByID(r.Context(), s.UserID, id)
	if errors.Is(err, storage.ErrNotFound) {
		return mautrix.MNotFound.WithMessage("Unknown device")
	} else if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, toDeviceJSON(d))
}

// updateDevice answers PUT /devices/{deviceId}: only display_name changes.
func (a *API) updateDevice(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	id, err := deviceIDVar(r)
	if err != nil {
		return err
	}
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if req.DisplayName != nil && len(*req.DisplayName) > maxDeviceDisplayName {
		return mautrix.MInvalidParam.WithMessage("Device display name is too long (max %d)", maxDeviceDisplayName)
	}
	ctx := r.Context()
	err = a.db.Write(ctx, func(tx *storage.Tx) error {
		if req.DisplayName == nil {
			// Nothing to change, but an unknown device is still 404.
			ok, err := tx.DeviceExists(ctx, s.UserID, id)
			if err == nil && !ok {
				err = mautrix.MNotFound.WithMessage("Unknown device")
			}
			return err
		}
		if err := tx.SetDeviceDisplayName(ctx, s.UserID, id, req.DisplayName); err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				return mautrix.MNotFound.WithMessage("Unknown device")
			}
			return fmt.Errorf("renaming device: %w", err)
		}
		// Display names are part of /keys/query answers.
		return a.markDeviceListChanged(ctx, tx, s.UserID)
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// deleteDevice answers DELETE /devices/{deviceId} (UIA with the password).
// Like Synapse, a body that is not JSON counts as empty, and deleting an
// unknown device succeeds.
func (a *API) deleteDevice(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	id, err := deviceIDVar(r)
	if err != nil {
		return err
	}
	var req struct {
		Auth rawAuth `json:"auth"`
	}
	if err := decodeJSON(r, &req); err != nil {
		var re mautrix.RespError
		if !errors.As(err, &re) || re.ErrCode != mautrix.MNotJSON.ErrCode {
			return err
		}
	}
	sess, done, err := a.requireUIA(w, r, uiaRequest{op: "delete_device:" + id, userID: s.UserID, flows: passwordFlows, auth: req.Auth})
	if !done {
		return err
	}
	if err := a.removeDevices(r.Context(), s.UserID, []string{id}); err != nil {
		return err
	}
	a.accounts.uia.finish(sess.id)
	return writeJSON(w, http.StatusOK, empty)
}

// deleteDevices answers POST /delete_devices (UIA with the password).
func (a *API) deleteDevices(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	var req struct {
		Auth    rawAuth   `json:"auth"`
		Devices *[]string `json:"devices"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if req.Devices == nil {
		return missingParam("Missing param: devices")
	}
	sess, done, err := a.requireUIA(w, r, uiaRequest{op: "delete_devices", userID: s.UserID, flows: passwordFlows, auth: req.Auth})
	if !done {
		return err
	}
	if err := a.removeDevices(r.Context(), s.UserID, *req.Devices); err != nil {
		return err
	}
	a.accounts.uia.finish(sess.id)
	return writeJSON(w, http.StatusOK, empty)
}

// removeDevices deletes those of ids the user has, with their tokens.
func (a *API) removeDevices(ctx context.Context, userID string, ids []string) error {
	return a.db.Write(ctx, func(tx *storage.Tx) error {
		existing, err := tx.DeviceIDsOfUser(ctx, userID, ids)
		if err != nil {
			return err
		}
		return a.deleteDevicesTx(ctx, tx, userID, existing)
	})
}

// seenInterval is how often a device's last_seen_ts/last_seen_ip is written:
// at most once a minute per device, never once per request.
const seenInterval = time.Minute

// seenTracker remembers when each device's last-seen row was last written.
type seenTracker struct {
	mu        sync.Mutex
	written   map[string]time.Time // user_id "\x00" device_id → last write
	lastSweep time.Time
}

func newSeenTracker() *seenTracker { return &seenTracker{written: make(map[string]time.Time)} }

// due reports whether the device's row should be written now, and if so
// records that it is being written.
func (st *seenTracker) due(userID, deviceID string, now time.Time) bool {
	key := userID + "\x00" + deviceID
	st.mu.Lock()
	defer st.mu.Unlock()
	if now.Sub(st.lastSweep) > seenInterval {
		// Entries older than the interval are due anyway: dropping them
		// keeps the map to the devices active in the last minute.
		for k, t := range st.written {
			if now.Sub(t) >= seenInterval {
				delete(st.written, k)
			}
		}
		st.lastSweep = now
	}
	if t, ok := st.written[key]; ok && now.Sub(t) < seenInterval {
		return false
	}
	st.written[key] = now
	return true
}

// forget drops a deleted device.
func (st *seenTracker) forget(userID, deviceID string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.written, userID+"\x00"+deviceID)
}

// noteDeviceSeen updates the device's last_seen_ts and last_seen_ip, at most
// once per seenInterval. Called by authenticate for every authenticated
// request; a failure only costs accuracy and is logged.
func (a *API) noteDeviceSeen(r *http.Request, s *Session) {
	if s.DeviceID == "" {
		return
	}
	now := time.Now()
	if !a.accounts.seen.due(s.UserID, s.DeviceID, now) {
		return
	}
	if err := a.db.TouchDevice(r.Context(), s.UserID, s.DeviceID, clientIP(r), now.UnixMilli()); err != nil {
		a.log.WarnContext(r.Context(), "recording device last seen failed", "user_id", s.UserID, "device_id", s.DeviceID, "err", err)
	}
}
