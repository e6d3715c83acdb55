package clientapi

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/agentspace/agentspace/storage"
)

// maxFilterListLen caps each list of a filter so one request cannot build
// an SQL statement with an unbounded number of parameters.
const maxFilterListLen = 500

// parseRoomEventFilter parses the JSON RoomEventFilter of a query parameter
// (/messages, /context) or request body (/search). An empty string is "no
// filter" and yields an empty FilterPart. Anything that is not a JSON object
// of the right shape is M_INVALID_PARAM.
// Spec: https://spec.matrix.org/v1.12/client-server-api/#filtering
func parseRoomEventFilter(raw string) (*mautrix.FilterPart, error) {
	fp := &mautrix.FilterPart{}
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return fp, nil
	}
	if !gjson.Valid(raw) || !gjson.Parse(raw).IsObject() {
		return nil, badParam("filter must be a JSON object")
	}
	if err := json.Unmarshal([]byte(raw), fp); err != nil {
		return nil, badParam("Invalid filter: %v", err)
	}
	if err := validateFilterPart(fp); err != nil {
		return nil, err
	}
	return fp, nil
}

// validateFilterPart checks the values json.Unmarshal cannot.
func validateFilterPart(fp *mautrix.FilterPart) error {
	if fp.Limit < 0 {
		return badParam("filter limit must not be negative")
	}
	for _, n := range []int{len(fp.Types), len(fp.NotTypes), len(fp.Senders), len(fp.NotSenders), len(fp.Rooms), len(fp.NotRooms)} {
		if n > maxFilterListLen {
			return badParam("filter lists may hold at most %d entries", maxFilterListLen)
		}
	}
	return nil
}

// storageEventFilter converts the event-level parts of a filter (types,
// senders, contains_url) to the SQL filter of package storage. Rooms and
// limit are the caller's business. A nil or empty filter gives nil.
func storageEventFilter(fp *mautrix.FilterPart) *storage.EventFilter {
	if fp == nil {
		return nil
	}
	f := &storage.EventFilter{ContainsURL: fp.ContainsURL}
	for _, t := range fp.Types {
		f.Types = append(f.Types, t.Type)
	}
	for _, t := range fp.NotTypes {
		f.NotTypes = append(f.NotTypes, t.Type)
	}
	for _, s := range fp.Senders {
		f.Senders = append(f.Senders, string(s))
	}
	for _, s := range fp.NotSenders {
		f.NotSenders = append(f.NotSenders, string(s))
	}
	// A list that is present but empty matches nothing; no event has an
	// empty type or sender, so [""] says that in SQL.
	if fp.Types != nil && len(f.Types) == 0 {
		f.Types = []string{""}
	}
	if fp.Senders != nil && len(f.Senders) == 0 {
		f.Senders = []string{""}
	}
	if len(f.Types) == 0 && len(f.NotTypes) == 0 && len(f.Senders) == 0 && len(f.NotSenders) == 0 && f.ContainsURL == nil {
		return nil
	}
	return f
}

// filterMatchesEvent applies the event-level parts of a filter to an event
// in memory (for lists not fetched through SQL, such as room state).
// A `types` list that is present but empty matches nothing, as the spec says.
func filterMatchesEvent(fp *mautrix.FilterPart, e *storage.Event) bool {
	if !filterMatches(fp, e.Type, e.Sender) {
		return false
	}
	if fp != nil && fp.ContainsURL != nil {
		has := gjson.GetBytes(e.PDUJSON, "content.url").Exists()
		if has != *fp.ContainsURL {
			return false
		}
	}
	return true
}

// filterMatches applies a filter's types/not_types and senders/not_senders
// to an event type and sender (sender "" skips the sender checks, for data
// that has none, such as account data).
func filterMatches(fp *mautrix.FilterPart, evType, sender string) bool {
	if fp == nil {
		return true
	}
	for _, t := range fp.NotTypes {
		if globMatch(t.Type, evType) {
			return false
		}
	}
	if fp.Types != nil && !slices.ContainsFunc(fp.Types, func(t event.Type) bool { return globMatch(t.Type, evType) }) {
		return false
	}
	if sender == "" {
		return true
	}
	if slices.Contains(fp.NotSenders, id.UserID(sender)) {
		return false
	}
	return fp.Senders == nil || slices.Contains(fp.Senders, id.UserID(sender))
}

// filterAllowsRoom applies rooms/not_rooms.
func filterAllowsRoom(fp *mautrix.FilterPart, roomID string) bool {
	if fp == nil {
		return true
	}
	for _, r := range fp.NotRooms {
		if string(r) == roomID {
			return false
		}
	}
	if fp.Rooms == nil {
		return true
	}
	for _, r := range fp.Rooms {
		if string(r) == roomID {
			return true
		}
	}
	return false
}

// globMatch matches s against a filter pattern in which '*' stands for any
// sequence of characters.
func globMatch(pattern, s string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == s
	}
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return strings.HasSuffix(s, last)
}
