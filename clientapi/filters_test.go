package clientapi

import (
	"encoding/json"
	"net/http"
	"testing"
)

func TestFilters(t *testing.T) {
	ts := newTestServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	base := "/_matrix/client/v3/user/" + ephEsc(alice) + "/filter"

	filter := map[string]any{
		"event_fields": []string{"type", "content.body"},
		"event_format": "client",
		"presence":     map[string]any{"types": []string{"m.presence"}, "limit": 10},
		"account_data": map[string]any{"not_types": []string{"*"}},
		"room": map[string]any{
			"rooms":         []string{"!a:localhost"},
			"include_leave": false,
			"timeline":      map[string]any{"limit": 20, "lazy_load_members": true, "contains_url": false, "not_senders": []string{bob}},
			"state":         map[string]any{"lazy_load_members": true, "include_redundant_members": false},
			"ephemeral":     map[string]any{"types": []string{"m.receipt", "m.typing"}},
			"account_data":  nil,
		},
		"org.example.unknown": true,
	}
	out := ts.mustDo(http.StatusOK, "POST", base, aliceTok, filter)
	id, ok := out["filter_id"].(string)
	if !ok || id == "" {
		t.Fatalf("filter_id: %v", out)
	}
	status, raw := ts.doRaw("GET", base+"/"+id, aliceTok, nil)
	want, _ := json.Marshal(filter)
	if status != http.StatusOK || string(raw) != string(want) {
		t.Fatalf("GET filter: %d %s, want %s", status, raw, want)
	}
	out2 := ts.mustDo(http.StatusOK, "POST", base, aliceTok, map[string]any{})
	if out2["filter_id"] == id {
		t.Fatalf("filter IDs repeat: %v", out2)
	}
	// Filter IDs are per user: bob's first filter does not see alice's.
	bobOut := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/user/"+ephEsc(bob)+"/filter", bobTok, map[string]any{"room": map[string]any{}})
	if got := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/user/"+ephEsc(bob)+"/filter/"+bobOut["filter_id"].(string), bobTok, nil); got["room"] == nil {
		t.Fatalf("bob's filter: %v", got)
	}

	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", base+"/999", aliceTok, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", base+"/abc", aliceTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", base+"/"+id, bobTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", base, bobTok, map[string]any{})
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "POST", base, "", map[string]any{})

	bad := []struct {
		name, code string
		body       any
	}{
		{"not json", "M_NOT_JSON", "{"},
		{"array body", "M_BAD_JSON", "[]"},
		{"timeline limit string", "M_BAD_JSON", map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": "10"}}}},
		{"negative limit", "M_INVALID_PARAM", map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": -1}}}},
		{"fractional limit", "M_INVALID_PARAM", map[string]any{"presence": map[string]any{"limit": 1.5}}},
		{"event_format", "M_INVALID_PARAM", map[string]any{"event_format": "xml"}},
		{"event_format type", "M_BAD_JSON", map[string]any{"event_format": 1}},
		{"types not array", "M_BAD_JSON", map[string]any{"room": map[string]any{"state": map[string]any{"types": "m.room.name"}}}},
		{"types of numbers", "M_BAD_JSON", map[string]any{"account_data": map[string]any{"types": []int{1}}}},
		{"room not object", "M_BAD_JSON", map[string]any{"room": "all"}},
		{"rooms not array", "M_BAD_JSON", map[string]any{"room": map[string]any{"rooms": "!a:b"}}},
		{"include_leave", "M_BAD_JSON", map[string]any{"room": map[string]any{"include_leave": "yes"}}},
		{"lazy_load_members", "M_BAD_JSON", map[string]any{"room": map[string]any{"state": map[string]any{"lazy_load_members": 1}}}},
		{"event_fields", "M_BAD_JSON", map[string]any{"event_fields": "type"}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			ts.wantErr(http.StatusBadRequest, tc.code, "POST", base, aliceTok, tc.body)
		})
	}
}
