package storage

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/tidwall/gjson"
)

// TranscriptEntry is one message of a room transcript.
type TranscriptEntry struct {
	EventID     string `json:"event_id"`
	TS          int64  `json:"ts"`
	Time        string `json:"time"` // RFC 3339, UTC, milliseconds
	Sender      string `json:"sender"`
	DisplayName string `json:"display_name,omitempty"`
	Type        string `json:"type"`
	MsgType     string `json:"msgtype,omitempty"`
	Body        string `json:"body"`
	// ReplyTo is the event a reply answers (m.in_reply_to).
	ReplyTo string `json:"reply_to,omitempty"`
	// ThreadRoot is the thread's root event (rel_type m.thread).
	ThreadRoot string `json:"thread_root,omitempty"`
	// Replaces is the message an edit changes (rel_type m.replace); Body
	// is then the new text.
	Replaces string `json:"replaces,omitempty"`
	// Redacted marks a deleted message (Body is then empty).
	Redacted   bool   `json:"redacted,omitempty"`
	RedactedBy string `json:"redacted_by,omitempty"`
	// Encrypted marks an end-to-end encrypted message (no body here).
	Encrypted bool `json:"encrypted,omitempty"`
	// System marks AgentSpace's own notices (the loop breaker's), which
	// stats leave out.
	System bool `json:"system,omitempty"`
}

// transcriptTypes are the event types a transcript lists.
var transcriptTypes = map[string]bool{"m.room.message": true, "m.room.encrypted": true, "m.sticker": true}

// EachTranscriptEntry calls fn for every message of a room, oldest first,
// with the sender's display name at that point of the room's history. It
// streams the room through EachRoomEvent: memory holds one page of events
// and the members' names, never the whole room.
func (db *DB) EachTranscriptEntry(ctx context.Context, roomID string, fn func(*TranscriptEntry) error) error {
	names := map[string]string{}
	return db.EachRoomEvent(ctx, roomID, func(e *Event) error {
		content := gjson.GetBytes(e.PDUJSON, "content")
		if e.Type == "m.room.member" && e.StateKey != nil {
			if n := content.Get("displayname"); n.Type == gjson.String && n.Str != "" {
				names[*e.StateKey] = n.Str
			}
			return nil
		}
		if e.StateKey != nil || !transcriptTypes[e.Type] {
			return nil
		}
		te := &TranscriptEntry{
			EventID: e.EventID, TS: e.OriginTS, Time: time.UnixMilli(e.OriginTS).UTC().Format("2006-01-02T15:04:05.000Z"),
			Sender: e.Sender, DisplayName: names[e.Sender], Type: e.Type,
			MsgType: content.Get("msgtype").Str, Body: content.Get("body").Str,
			Encrypted: e.Type == "m.room.encrypted",
			System:    content.Get(`org\.agentspace\.loop_breaker`).Exists(),
		}
		if e.RedactedBy != nil {
			te.Redacted, te.RedactedBy, te.Body = true, *e.RedactedBy, ""
		}
		rel := content.Get(`m\.relates_to`)
		switch rel.Get("rel_type").Str {
		case "m.thread":
			te.ThreadRoot = rel.Get("event_id").Str
		case "m.replace":
			te.Replaces = rel.Get("event_id").Str
			if nb := content.Get(`m\.new_content.body`); nb.Type == gjson.String {
				te.Body = nb.Str
			}
		}
		if irt := rel.Get(`m\.in_reply_to.event_id`); irt.Type == gjson.String && !rel.Get("is_falling_back").Bool() {
			te.ReplyTo = irt.Str
		}
		return fn(te)
	})
}

// SenderStats are one sender's figures in a room.
type SenderStats struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"display_name,omitempty"`
	Messages    int    `json:"messages"`
	Words       int    `json:"words"`
	FirstTS     int64  `json:"first_ts"`
	LastTS      int64  `json:"last_ts"`
	// Responses counts messages that followed another sender's message;
	// MedianResponseMS is the median time between the two (null if none).
	Responses        int    `json:"responses"`
	MedianResponseMS *int64 `json:"median_response_ms"`

	responseTimes []int64
}

// RoomStats summarises a room's messages.
type RoomStats struct {
	RoomID   string         `json:"room_id"`
	Messages int            `json:"messages"`
	Redacted int            `json:"redacted"`
	Edits    int            `json:"edits"`
	FirstTS  int64          `json:"first_ts,omitempty"`
	LastTS   int64          `json:"last_ts,omitempty"`
	Senders  []*SenderStats `json:"senders"`

	bySender map[string]*SenderStats
	prev     *TranscriptEntry
}

// NewRoomStats starts the stats of a room; feed it with Add in order.
func NewRoomStats(roomID string) *RoomStats {
	return &RoomStats{RoomID: roomID, Senders: []*SenderStats{}, bySender: map[string]*SenderStats{}}
}

// Add counts one transcript entry. Edits and deleted messages are counted
// apart and do not count as messages, AgentSpace's own notices not at all; a response is a message whose
// previous message came from someone else. Memory grows by one int64 per
// response (for the exact median), not by the messages themselves.
func (st *RoomStats) Add(te *TranscriptEntry) {
	switch {
	case te.System:
		return
	case te.Redacted:
		st.Redacted++
		return
	case te.Replaces != "":
		st.Edits++
		return
	}
	st.Messages++
	if st.FirstTS == 0 {
		st.FirstTS = te.TS
	}
	st.LastTS = te.TS
	ss := st.bySender[te.Sender]
	if ss == nil {
		ss = &SenderStats{UserID: te.Sender, FirstTS: te.TS}
		st.bySender[te.Sender] = ss
		st.Senders = append(st.Senders, ss)
	}
	if te.DisplayName != "" {
		ss.DisplayName = te.DisplayName
	}
	ss.Messages++
	ss.Words += len(strings.Fields(te.Body))
	ss.LastTS = te.TS
	if st.prev != nil && st.prev.Sender != te.Sender {
		ss.Responses++
		ss.responseTimes = append(ss.responseTimes, max(te.TS-st.prev.TS, 0))
	}
	prev := *te
	prev.Body = "" // keep only what the next message needs
	st.prev = &prev
}

// Finish computes the medians.
func (st *RoomStats) Finish() *RoomStats {
	for _, ss := range st.Senders {
		if n := len(ss.responseTimes); n > 0 {
			slices.Sort(ss.responseTimes)
			m := ss.responseTimes[n/2]
			if n%2 == 0 {
				m = (ss.responseTimes[n/2-1] + ss.responseTimes[n/2]) / 2
			}
			ss.MedianResponseMS = &m
		}
	}
	return st
}
