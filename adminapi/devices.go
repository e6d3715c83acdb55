package adminapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// Device endpoints of the user admin API (v2/users/{userId}/devices...).

// maxDeviceDisplayName is Synapse's limit on device display names.
const maxDeviceDisplayName = 100

// adminDevice is a device as the admin API shows it.
type adminDevice struct {
	DeviceID          string  `json:"device_id"`
	DisplayName       *string `json:"display_name,omitempty"`
	LastSeenIP        *string `json:"last_seen_ip"`
	LastSeenUserAgent *string `json:"last_seen_user_agent"`
	LastSeenTS        *int64  `json:"last_seen_ts"`
	UserID            string  `json:"user_id"`
	Dehydrated        bool    `json:"dehydrated"`
}

func toAdminDevice(d *storage.Device) adminDevice {
	out := adminDevice{DeviceID: d.DeviceID, DisplayName: d.DisplayName, UserID: d.UserID}
	if d.LastSeenIP != "" {
		out.LastSeenIP = &d.LastSeenIP
	}
	if d.LastSeenTS > 0 {
		out.LastSeenTS = &d.LastSeenTS
	}
	return out
}

// deviceOwner returns the {userId} of a device endpoint: local and existing.
func (a *API) deviceOwner(r *http.Request) (string, error) {
	userID, err := a.localUserIDVar(r, "Can only lookup local users")
	if err != nil {
		return "", err
	}
	if _, err := a.db.UserByID(r.Context(), userID); errors.Is(err, storage.ErrNotFound) {
		return "", mautrix.MNotFound.WithMessage("Unknown user")
	} else if err != nil {
		return "", err
	}
	return userID, nil
}

// deviceIDVar is the {deviceId} path segment.
func deviceIDVar(r *http.Request) (string, error) {
	d, err := pathVar(r, "deviceId")
	if err != nil || d == "" {
		return "", invalidParam("Invalid device ID")
	}
	return d, nil
}

// listDevices is GET /_synapse/admin/v2/users/{userId}/devices.
func (a *API) listDevices(w http.ResponseWriter, r *http.Request) error {
	userID, err := a.deviceOwner(r)
	if err != nil {
		return err
	}
	ds, err := a.db.DevicesOfUser(r.Context(), userID)
	if err != nil {
		return err
	}
	out := make([]adminDevice, 0, len(ds))
	for _, d := range ds {
		out = append(out, toAdminDevice(d))
	}
	return writeJSON(w, http.StatusOK, map[string]any{"devices": out, "total": len(out)})
}

// createDevice is POST /_synapse/admin/v2/users/{userId}/devices: a device
// without any token; nothing happens when it exists.
func (a *API) createDevice(w http.ResponseWriter, r *http.Request) error {
	userID, err := a.deviceOwner(r)
	if err != nil {
		return err
	}
	b, err := readBody(r, false)
	if err != nil {
		return err
	}
	deviceID, err := b.string("device_id")
	if err != nil {
		return err
	}
	if deviceID == nil {
		return missingParam("Missing params: ['device_id']")
	}
	if *deviceID == "" || len(*deviceID) > 512 || strings.ContainsAny(*deviceID, "\x00\n\r") {
		return invalidParam("Invalid device_id")
	}
	ctx := r.Context()
	err = a.db.Write(ctx, func(tx *storage.Tx) error {
		exists, err := tx.DeviceExists(ctx, userID, *deviceID)
		if err != nil || exists {
			return err
		}
		if err := tx.UpsertDevice(ctx, &storage.Device{UserID: userID, DeviceID: *deviceID, CreatedTS: time.Now().UnixMilli()}); err != nil {
			return err
		}
		pos, err := tx.MarkDeviceListChanged(ctx, userID)
		if err != nil {
			return err
		}
		n := a.rooms.Notifier()
		tx.OnCommit(func() { n.Advance(pos, rooms.Wake{ShareRoomsWith: []string{userID}}) })
		return nil
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// deleteDevices is POST /_synapse/admin/v2/users/{userId}/delete_devices.
func (a *API) deleteDevices(w http.ResponseWriter, r *http.Request) error {
	userID, err := a.deviceOwner(r)
	if err != nil {
		return err
	}
	b, err := readBody(r, false)
	if err != nil {
		return err
	}
	if !b.has("devices") {
		return missingParam("Missing params: ['devices']")
	}
	var ids []string
	if err := json.Unmarshal(b["devices"], &ids); err != nil {
		return badJSON("'devices' must be a list of device IDs")
	}
	ctx := r.Context()
	err = a.db.Write(ctx, func(tx *storage.Tx) error {
		existing, err := tx.DeviceIDsOfUser(ctx, userID, ids)
		if err != nil {
			return err
		}
		return a.deleteDevicesTx(ctx, tx, userID, existing)
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// getDevice is GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}.
func (a *API) getDevice(w http.ResponseWriter, r *http.Request) error {
	userID, err := a.deviceOwner(r)
	if err != nil {
		return err
	}
	deviceID, err := deviceIDVar(r)
	if err != nil {
		return err
	}
	d, err := a.db.DeviceByID(r.Context(), userID, deviceID)
	if errors.Is(err, storage.ErrNotFound) {
		return mautrix.MNotFound.WithMessage("No device found")
	} else if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, toAdminDevice(d))
}

// putDevice is PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId}:
// only display_name changes.
func (a *API) putDevice(w http.ResponseWriter, r *http.Request) error {
	userID, err := a.deviceOwner(r)
	if err != nil {
		return err
	}
	deviceID, err := deviceIDVar(r)
	if err != nil {
		return err
	}
	b, err := readBody(r, false)
	if err != nil {
		return err
	}
	name, err := b.string("display_name")
	if err != nil {
		return err
	}
	if name != nil && len(*name) > maxDeviceDisplayName {
		return invalidParam("Device display name is too long (max %d)", maxDeviceDisplayName)
	}
	ctx := r.Context()
	if _, err := a.db.DeviceByID(ctx, userID, deviceID); errors.Is(err, storage.ErrNotFound) {
		return mautrix.MNotFound.WithMessage("No device found")
	} else if err != nil {
		return err
	}
	if b.has("display_name") {
		if err := a.db.Write(ctx, func(tx *storage.Tx) error { return tx.SetDeviceDisplayName(ctx, userID, deviceID, name) }); err != nil {
			return err
		}
	}
	return writeJSON(w, http.StatusOK, empty)
}

// deleteDevice is DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}:
// the device goes with its tokens (the next request with them is 401); an
// unknown device is not an error.
func (a *API) deleteDevice(w http.ResponseWriter, r *http.Request) error {
	userID, err := a.deviceOwner(r)
	if err != nil {
		return err
	}
	deviceID, err := deviceIDVar(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	err = a.db.Write(ctx, func(tx *storage.Tx) error {
		existing, err := tx.DeviceIDsOfUser(ctx, userID, []string{deviceID})
		if err != nil {
			return err
		}
		return a.deleteDevicesTx(ctx, tx, userID, existing)
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}
