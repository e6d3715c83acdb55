package rooms

import (
	"encoding/json"
	"time"

	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/agentspace/agentspace/storage"
)

// ClientEvent is an event in the client-server API format.
type ClientEvent struct {
	Content        json.RawMessage `json:"content"`
	EventID        string          `json:"event_id"`
	OriginServerTS int64           `json:"origin_server_ts"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	Redacts        string          `json:"redacts,omitempty"`
	Unsigned       json.RawMessage `json:"unsigned,omitempty"`
}

// Viewer identifies who an event is rendered for: transaction_id is only
// shown to the device that sent the event.
type Viewer struct {
	UserID   string
	DeviceID string
}

// FormatOptions tune ClientEvent rendering.
type FormatOptions struct {
	// OmitRoomID drops room_id (the sync format, where the room is the map key).
	OmitRoomID bool
}

// ToClientEvent renders a stored event for a viewer.
func ToClientEvent(e *storage.Event, v Viewer, opts FormatOptions) ClientEvent {
	pdu := gjson.ParseBytes(e.PDUJSON)
	ce := ClientEvent{
		Content:        json.RawMessage(pdu.Get("content").Raw),
		EventID:        e.EventID,
		OriginServerTS: e.OriginTS,
		Sender:         e.Sender,
		StateKey:       e.StateKey,
		Type:           e.Type,
	}
	if len(ce.Content) == 0 {
		ce.Content = json.RawMessage("{}")
	}
	if !opts.OmitRoomID {
		ce.RoomID = e.RoomID
	}
	if e.Type == "m.room.redaction" {
		if r := pdu.Get("redacts"); r.Exists() {
			ce.Redacts = r.Str
		} else {
			ce.Redacts = pdu.Get("content.redacts").Str
		}
	}
	unsigned := e.Unsigned
	if len(unsigned) == 0 {
		unsigned = []byte("{}")
	}
	age := time.Now().UnixMilli() - e.OriginTS
	if age < 0 {
		age = 0
	}
	unsigned, _ = sjson.SetBytes(unsigned, "age", age)
	if e.TxnID != nil && e.TxnDevice != nil && v.UserID == e.Sender && v.DeviceID == *e.TxnDevice {
		unsigned, _ = sjson.SetBytes(unsigned, "transaction_id", *e.TxnID)
	}
	ce.Unsigned = unsigned
	return ce
}

// ToClientEvents renders a list of events.
func ToClientEvents(evs []*storage.Event, v Viewer, opts FormatOptions) []ClientEvent {
	out := make([]ClientEvent, len(evs))
	for i, e := range evs {
		out[i] = ToClientEvent(e, v, opts)
	}
	return out
}
