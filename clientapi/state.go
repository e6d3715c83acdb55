package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// registerRoomState registers the room state endpoints. The state key is
// everything after the event type, so an empty key works both as
// .../state/{type} and .../state/{type}/.
func (a *API) registerRoomState(rt routes) {
	rt.client("/rooms/{roomId}/state", a.authed(a.getRoomState), http.MethodGet)
	rt.client("/rooms/{roomId}/state/{eventType}", a.authed(a.getStateEvent), http.MethodGet)
	rt.client("/rooms/{roomId}/state/{eventType}/{stateKey:.*}", a.authed(a.getStateEvent), http.MethodGet)
	rt.client("/rooms/{roomId}/state/{eventType}", a.authed(a.putStateEvent), http.MethodPut)
	rt.client("/rooms/{roomId}/state/{eventType}/{stateKey:.*}", a.authed(a.putStateEvent), http.MethodPut)
}

// readableState returns the room state the reader may see: current, or as
// it was when they left.
func (a *API) readableState(ctx context.Context, rr *roomReader) ([]*storage.Event, error) {
	if at := rr.stateAt(); at > 0 {
		return a.db.StateAt(ctx, rr.roomID, at)
	}
	return a.db.CurrentState(ctx, rr.roomID)
}

// getRoomState is GET /rooms/{roomId}/state.
func (a *API) getRoomState(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	rr, err := a.readAccess(r.Context(), roomID, s.UserID, true)
	if err != nil {
		return err
	}
	evs, err := a.readableState(r.Context(), rr)
	if err != nil {
		return err
	}
	out := rooms.ToClientEvents(evs, viewerOf(s), rooms.FormatOptions{})
	if out == nil {
		out = []rooms.ClientEvent{}
	}
	return writeJSON(w, http.StatusOK, out)
}

// stateVars returns the event type and state key of a state path.
func stateVars(r *http.Request) (eventType, stateKey string, err error) {
	if eventType, err = roomVar(r, "eventType"); err != nil {
		return "", "", err
	}
	if eventType == "" {
		return "", "", badParam("Missing event type")
	}
	stateKey, err = roomVar(r, "stateKey")
	return eventType, stateKey, err
}

// getStateEvent is GET /rooms/{roomId}/state/{eventType}/{stateKey}: the
// content, or with ?format=event the whole event.
func (a *API) getStateEvent(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	eventType, stateKey, err := stateVars(r)
	if err != nil {
		return err
	}
	format := r.URL.Query().Get("format")
	if format != "" && format != "content" && format != "event" {
		return badParam("format must be \"content\" or \"event\"")
	}
	rr, err := a.readAccess(r.Context(), roomID, s.UserID, true)
	if err != nil {
		return err
	}
	var ev *storage.Event
	if at := rr.stateAt(); at > 0 {
		ev, err = a.db.StateEventAt(r.Context(), roomID, eventType, stateKey, at)
	} else {
		ev, err = a.db.CurrentStateEvent(r.Context(), roomID, eventType, stateKey)
	}
	if errors.Is(err, storage.ErrNotFound) {
		return mautrix.MNotFound.WithMessage("Event not found")
	} else if err != nil {
		return err
	}
	if format == "event" {
		return writeJSON(w, http.StatusOK, rooms.ToClientEvent(ev, viewerOf(s), rooms.FormatOptions{}))
	}
	content := gjson.GetBytes(ev.PDUJSON, "content").Raw
	if content == "" {
		content = "{}"
	}
	return writeJSON(w, http.StatusOK, json.RawMessage(content))
}

// putStateEvent is PUT /rooms/{roomId}/state/{eventType}/{stateKey}.
func (a *API) putStateEvent(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	roomID, err := roomIDVar(r)
	if err != nil {
		return err
	}
	eventType, stateKey, err := stateVars(r)
	if err != nil {
		return err
	}
	content, err := readJSONObject(r)
	if err != nil {
		return err
	}
	if eventType == spec.MRoomCanonicalAlias {
		if err := a.checkCanonicalAlias(r.Context(), roomID, content); err != nil {
			return err
		}
	}
	// Setting the same content again returns the existing event, as Synapse
	// does: clients re-send state (room name, power levels) freely.
	if prev, err := a.rooms.CurrentStateEvent(r.Context(), roomID, eventType, stateKey); err != nil {
		return hideUnknownRoom(err)
	} else if prev != nil && string(prev.SenderID()) == s.UserID && jsonEqual(prev.Content(), content) {
		if m, err := a.rooms.Membership(r.Context(), roomID, s.UserID); err == nil && m == spec.Join {
			return writeJSON(w, http.StatusOK, map[string]string{"event_id": prev.EventID()})
		}
	}
	ev, err := a.rooms.Send(r.Context(), roomID, rooms.EventRequest{
		Sender: s.UserID, Type: eventType, StateKey: &stateKey, Content: content,
	})
	if err != nil {
		return hideUnknownRoom(err)
	}
	return writeJSON(w, http.StatusOK, map[string]string{"event_id": ev.EventID})
}

// jsonEqual compares two JSON documents by value.
func jsonEqual(x, y []byte) bool {
	if bytes.Equal(x, y) {
		return true
	}
	var vx, vy any
	if json.Unmarshal(x, &vx) != nil || json.Unmarshal(y, &vy) != nil {
		return false
	}
	return reflect.DeepEqual(vx, vy)
}

// errBadAlias is the spec's error for canonical aliases that do not point
// to the room.
var errBadAlias = mautrix.RespError{ErrCode: "M_BAD_ALIAS", StatusCode: http.StatusBadRequest}

// checkCanonicalAlias validates m.room.canonical_alias content: each alias
// must be well-formed and, when local, map to this room (spec: "m.room.canonical_alias").
func (a *API) checkCanonicalAlias(ctx context.Context, roomID string, content json.RawMessage) error {
	var c struct {
		Alias      *string  `json:"alias"`
		AltAliases []string `json:"alt_aliases"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return mautrix.MBadJSON.WithMessage("Invalid m.room.canonical_alias content: %v", err)
	}
	aliases := c.AltAliases
	if c.Alias != nil && *c.Alias != "" {
		aliases = append([]string{*c.Alias}, aliases...)
	}
	for _, alias := range aliases {
		_, server, ok := splitAlias(alias)
		if !ok {
			return badParam("Invalid room alias %q", alias)
		}
		if server != a.cfg.ServerName {
			continue // no federation: remote aliases cannot be checked
		}
		al, err := a.db.AliasByName(ctx, alias)
		if errors.Is(err, storage.ErrNotFound) || (err == nil && al.RoomID != roomID) {
			return errBadAlias.WithMessage("Room alias %s does not point to this room", alias)
		} else if err != nil {
			return err
		}
	}
	return nil
}
