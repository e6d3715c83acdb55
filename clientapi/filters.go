package clientapi

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http"

	"maunium.net/go/mautrix"
)

// postFilter answers POST /user/{userId}/filter
// (https://spec.matrix.org/v1.12/client-server-api/#post_matrixclientv3useruseridfilter).
func (a *API) postFilter(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	userID, err := ephVar(r, "userId")
	if err != nil {
		return err
	}
	if userID != s.UserID {
		return mautrix.MForbidden.WithMessage("Cannot create filters for other users")
	}
	body, err := readJSONObject(r)
	if err != nil {
		return err
	}
	if err := validateFilter(body); err != nil {
		return err
	}
	id, err := a.db.InsertFilter(r.Context(), userID, body)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"filter_id": id})
}

// getFilter answers GET /user/{userId}/filter/{filterId}.
func (a *API) getFilter(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	vars, err := ephVars(r, "userId", "filterId")
	if err != nil {
		return err
	}
	if vars[0] != s.UserID {
		return mautrix.MForbidden.WithMessage("Cannot read the filters of other users")
	}
	filter, err := a.db.FilterByID(r.Context(), vars[0], vars[1])
	if err != nil {
		return ephNotFound(err, "No such filter")
	}
	return ephWriteRaw(w, filter)
}

// validateFilter checks a filter's shape against the spec's Filter schema:
// M_BAD_JSON for a field of the wrong type, M_INVALID_PARAM for a bad value.
// Unknown fields are allowed (clients send experimental ones); null counts as absent.
func validateFilter(raw json.RawMessage) error {
	top, err := filterObject(raw, "filter")
	if err != nil {
		return err
	}
	for key, v := range top {
		switch key {
		case "event_fields":
			err = filterStrings(v, key)
		case "event_format":
			var f string
			if json.Unmarshal(v, &f) != nil {
				return mautrix.MBadJSON.WithMessage("event_format must be a string")
			}
			if f != "client" && f != "federation" {
				return badParam("event_format must be \"client\" or \"federation\"")
			}
		case "presence", "account_data":
			err = validateEventFilter(v, key, false)
		case "room":
			err = validateRoomFilter(v, key)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func validateRoomFilter(raw json.RawMessage, path string) error {
	obj, err := filterObject(raw, path)
	if err != nil {
		return err
	}
	for key, v := range obj {
		p := path + "." + key
		switch key {
		case "rooms", "not_rooms":
			err = filterStrings(v, p)
		case "include_leave":
			err = filterBool(v, p)
		case "account_data", "ephemeral", "state", "timeline":
			err = validateEventFilter(v, p, true)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// validateEventFilter checks an EventFilter, or a RoomEventFilter when inRoom.
func validateEventFilter(raw json.RawMessage, path string, inRoom bool) error {
	obj, err := filterObject(raw, path)
	if err != nil {
		return err
	}
	for key, v := range obj {
		p := path + "." + key
		switch key {
		case "limit":
			err = filterLimit(v, p)
		case "types", "not_types", "senders", "not_senders":
			err = filterStrings(v, p)
		}
		if inRoom && err == nil {
			switch key {
			case "rooms", "not_rooms", "related_by_rel_types", "related_by_senders":
				err = filterStrings(v, p)
			case "contains_url", "include_redundant_members", "lazy_load_members", "unread_thread_notifications":
				err = filterBool(v, p)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func filterIsNull(raw json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(raw), []byte("null")) }

// filterObject decodes a JSON object (null: empty).
func filterObject(raw json.RawMessage, path string) (map[string]json.RawMessage, error) {
	if filterIsNull(raw) {
		return nil, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, mautrix.MBadJSON.WithMessage("%s must be an object", path)
	}
	return obj, nil
}

func filterStrings(raw json.RawMessage, path string) error {
	if filterIsNull(raw) {
		return nil
	}
	var s []string
	if err := json.Unmarshal(raw, &s); err != nil {
		return mautrix.MBadJSON.WithMessage("%s must be an array of strings", path)
	}
	return nil
}

func filterBool(raw json.RawMessage, path string) error {
	if filterIsNull(raw) {
		return nil
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err != nil {
		return mautrix.MBadJSON.WithMessage("%s must be a boolean", path)
	}
	return nil
}

// filterLimit accepts a non-negative integer. The spec asks for > 0 but
// Synapse accepts 0 and clients send it to get no timeline events.
func filterLimit(raw json.RawMessage, path string) error {
	if filterIsNull(raw) {
		return nil
	}
	var n float64
	if err := json.Unmarshal(raw, &n); err != nil {
		return mautrix.MBadJSON.WithMessage("%s must be a number", path)
	}
	if n != math.Trunc(n) || n < 0 || n > 1<<53 {
		return badParam("%s must be a non-negative integer", path)
	}
	return nil
}
