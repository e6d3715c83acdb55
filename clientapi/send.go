package clientapi

import (
	"errors"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// registerRoomSend registers sending, redacting and fetching single events.
// The POST forms without a txnId are the r0 ones some older clients use.
func (a *API) registerRoomSend(rt routes) {
	rt.client("/rooms/{roomId}/send/{eventType}/{txnId}", a.authed(a.rateLimited(a.sendEvent)), http.MethodPut)
	rt.client("/rooms/{roomId}/send/{eventType}", a.authed(a.rateLimited(a.sendEvent)), http.MethodPost)
	rt.client("/rooms/{roomId}/redact/{eventId}/{txnId}", a.authed(a.rateLimited(a.redactEvent)), http.MethodPut)
	rt.client("/rooms/{roomId}/redact/{eventId}", a.authed(a.rateLimited(a.redactEvent)), http.MethodPost)
	rt.client("/rooms/{roomId}/event/{eventId}", a.authed(a.getEvent), http.MethodGet)
}

// sendEvent is PUT /rooms/{roomId}/send/{eventType}/{txnId}. The same txnId
// from the same device returns the first event instead of sending again.
func (a *API) sendEvent(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	eventType, err := roomVar(r, "eventType")
	if err != nil {
		return err
	}
	if eventType == "" {
		return badParam("Missing event type")
	}
	txnID, err := roomVar(r, "txnId")
	if err != nil {
		return err
	}
	content, err := readJSONObject(r)
	if err != nil {
		return err
	}
	req := rooms.EventRequest{Sender: s.UserID, Type: eventType, Content: content, TxnID: txnID, DeviceID: s.DeviceID}
	var ev *storage.Event
	if eventType == spec.MRoomRedaction {
		// A redaction sent as a plain event (v11 puts the target in content)
		// must still redact, and still obey the redaction rules.
		target := gjson.GetBytes(content, "redacts")
		if target.Type != gjson.String || target.Str == "" {
			return mautrix.MBadJSON.WithMessage("m.room.redaction needs content.redacts")
		}
		req.Redacts = target.Str
		ev, err = a.rooms.Redact(r.Context(), roomID, req)
	} else {
		ev, err = a.sendMessage(r.Context(), s, roomID, req) // behind the loop breaker (agents.go)
	}
	if err != nil {
		return hideUnknownRoom(err)
	}
	return writeJSON(w, http.StatusOK, map[string]string{"event_id": ev.EventID})
}

// redactEvent is PUT /rooms/{roomId}/redact/{eventId}/{txnId} {reason?}.
func (a *API) redactEvent(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	eventID, err := eventIDVar(r)
	if err != nil {
		return err
	}
	txnID, err := roomVar(r, "txnId")
	if err != nil {
		return err
	}
	content, err := readJSONObject(r)
	if err != nil {
		return err
	}
	if reason := gjson.GetBytes(content, "reason"); reason.Exists() && reason.Type != gjson.String {
		return mautrix.MBadJSON.WithMessage("reason must be a string")
	}
	ev, err := a.rooms.Redact(r.Context(), roomID, rooms.EventRequest{
		Sender: s.UserID, Redacts: eventID, Content: content, TxnID: txnID, DeviceID: s.DeviceID,
	})
	if err != nil {
		return hideUnknownRoom(err)
	}
	return writeJSON(w, http.StatusOK, map[string]string{"event_id": ev.EventID})
}

// errEventNotFound is the answer for events that do not exist, are in
// another room, or are not visible to the user: all look the same.
var errEventNotFound = mautrix.MNotFound.WithMessage("Event not found")

// getEvent is GET /rooms/{roomId}/event/{eventId}.
func (a *API) getEvent(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	eventID, err := eventIDVar(r)
	if err != nil {
		return err
	}
	ev, err := a.db.EventByID(r.Context(), eventID)
	if errors.Is(err, storage.ErrNotFound) {
		return errEventNotFound
	} else if err != nil {
		return err
	}
	if ev.RoomID != roomID {
		return errEventNotFound
	}
	vis, err := a.rooms.VisibilityFor(r.Context(), roomID, s.UserID)
	if err != nil {
		return err
	}
	if ok, err := vis.CanSee(r.Context(), ev); err != nil {
		return err
	} else if !ok {
		return errEventNotFound
	}
	// Bundled relations stop where a departed user's view of the room stops.
	var maxPos storage.StreamPos
	if vis.Membership() != spec.Join {
		if rr, err := a.readAccess(r.Context(), roomID, s.UserID, true); err == nil {
			maxPos = rr.until
		}
	}
	out, err := a.renderEvents(r.Context(), viewerOf(s), []*storage.Event{ev}, maxPos)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out[0])
}
