package clientapi

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"unicode/utf8"
)

// The /sync response is written by hand around its events. The events are
// JSON already (rendered once per event and cached, see renderSyncEvent);
// encoding/json would scan every json.RawMessage again to validate and
// compact it, which under fan-out to many observers cost more CPU than
// building the rest of the response. Everything that is not an event list
// still goes through encoding/json. The output is byte for byte what
// json.Marshal writes for the same value (syncjson_test.go holds us to it).

// appendJSON appends the response's JSON encoding to b.
func (r *syncResponse) appendJSON(b []byte) ([]byte, error) {
	var err error
	b = append(b, `{"next_batch":`...)
	b = appendJSONString(b, r.NextBatch)
	b = append(b, `,"rooms":{"join":`...)
	if b, err = appendRoomMap(b, r.Rooms.Join, (*joinedRoom).appendJSON); err != nil {
		return nil, err
	}
	b = append(b, `,"invite":`...)
	if b, err = appendMarshal(b, r.Rooms.Invite); err != nil {
		return nil, err
	}
	b = append(b, `,"leave":`...)
	if b, err = appendRoomMap(b, r.Rooms.Leave, (*leftRoom).appendJSON); err != nil {
		return nil, err
	}
	b = append(b, `,"knock":`...)
	if b, err = appendMarshal(b, r.Rooms.Knock); err != nil {
		return nil, err
	}
	b = append(b, `},"account_data":`...)
	if b, err = appendEventList(b, r.AccountData); err != nil {
		return nil, err
	}
	b = append(b, `,"presence":`...)
	if b, err = appendEventList(b, r.Presence); err != nil {
		return nil, err
	}
	b = append(b, `,"to_device":`...)
	if b, err = appendEventList(b, r.ToDevice); err != nil {
		return nil, err
	}
	b = append(b, `,"device_lists":`...)
	if r.DeviceLists.Changed == nil && r.DeviceLists.Left == nil {
		b = append(b, `{"changed":null,"left":null}`...)
	} else if b, err = appendMarshal(b, r.DeviceLists); err != nil {
		return nil, err
	}
	b = append(b, `,"device_one_time_keys_count":`...)
	if b, err = appendMarshal(b, r.DeviceOneTimeKeysCount); err != nil {
		return nil, err
	}
	b = append(b, `,"device_unused_fallback_key_types":`...)
	if b, err = appendMarshal(b, r.DeviceUnusedFallbackKeyTypes); err != nil {
		return nil, err
	}
	if len(r.OrgMatrixMSC2732FallbackTypes) > 0 {
		b = append(b, `,"org.matrix.msc2732.device_unused_fallback_key_types":`...)
		if b, err = appendMarshal(b, r.OrgMatrixMSC2732FallbackTypes); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

func (jr *joinedRoom) appendJSON(b []byte) ([]byte, error) {
	var err error
	b = append(b, `{"summary":`...)
	if jr.Summary.Heroes == nil && jr.Summary.JoinedMemberCount == nil && jr.Summary.InvitedMemberCount == nil {
		b = append(b, `{}`...)
	} else if b, err = appendMarshal(b, jr.Summary); err != nil {
		return nil, err
	}
	b = append(b, `,"state":{"events":`...)
	b = appendRawList(b, jr.State.Events)
	b = append(b, `},"timeline":`...)
	b = jr.Timeline.appendJSON(b)
	b = append(b, `,"ephemeral":`...)
	if b, err = appendEventList(b, jr.Ephemeral); err != nil {
		return nil, err
	}
	b = append(b, `,"account_data":`...)
	if b, err = appendEventList(b, jr.AccountData); err != nil {
		return nil, err
	}
	b = append(b, `,"unread_notifications":{"notification_count":`...)
	b = strconv.AppendInt(b, int64(jr.UnreadNotifications.NotificationCount), 10)
	b = append(b, `,"highlight_count":`...)
	b = strconv.AppendInt(b, int64(jr.UnreadNotifications.HighlightCount), 10)
	return append(b, `}}`...), nil
}

func (lr *leftRoom) appendJSON(b []byte) ([]byte, error) {
	var err error
	b = append(b, `{"state":{"events":`...)
	b = appendRawList(b, lr.State.Events)
	b = append(b, `},"timeline":`...)
	b = lr.Timeline.appendJSON(b)
	b = append(b, `,"account_data":`...)
	if b, err = appendEventList(b, lr.AccountData); err != nil {
		return nil, err
	}
	return append(b, '}'), nil
}

func (t *timeline) appendJSON(b []byte) []byte {
	b = append(b, `{"events":`...)
	b = appendRawList(b, t.Events)
	if t.Limited {
		b = append(b, `,"limited":true`...)
	} else {
		b = append(b, `,"limited":false`...)
	}
	if t.PrevBatch != "" {
		b = append(b, `,"prev_batch":`...)
		b = appendJSONString(b, t.PrevBatch)
	}
	return append(b, '}')
}

// appendRoomMap writes a room id → room object, keys sorted as
// encoding/json sorts map keys, nil as null.
func appendRoomMap[R any](b []byte, m map[string]*R, appendRoom func(*R, []byte) ([]byte, error)) ([]byte, error) {
	if m == nil {
		return append(b, "null"...), nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		if m[k] == nil {
			b = append(b, "null"...)
			continue
		}
		var err error
		if b, err = appendRoom(m[k], b); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

// appendRawList writes rendered events as they are. They come from
// renderSyncEvent, whose output is compact, valid JSON by construction.
func appendRawList(b []byte, evs []json.RawMessage) []byte {
	if evs == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, e := range evs {
		if i > 0 {
			b = append(b, ',')
		}
		if e == nil {
			b = append(b, "null"...)
		} else {
			b = append(b, e...)
		}
	}
	return append(b, ']')
}

// appendEventList writes the common empty list without encoding/json.
func appendEventList(b []byte, l eventList) ([]byte, error) {
	if l.Events != nil && len(l.Events) == 0 {
		return append(b, `{"events":[]}`...), nil
	}
	return appendMarshal(b, l)
}

func appendMarshal(b []byte, v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, raw...), nil
}

// appendJSONString quotes s as encoding/json does. Tokens and room ids are
// plain ASCII and are copied directly; anything else takes json.Marshal.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' || c >= utf8.RuneSelf {
			raw, _ := json.Marshal(s) // a string always marshals
			return append(b, raw...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// isCompactJSON reports whether b is valid JSON without insignificant
// whitespace, i.e. safe to copy into a response as it is.
func isCompactJSON(b []byte) bool {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return false
	}
	return bytes.Equal(buf.Bytes(), b)
}
