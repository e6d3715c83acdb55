package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/pushrules"
)

// specDefaultRules lists the v1.12 predefined rules by kind, in order.
var specDefaultRules = map[string][]string{
	"override": {".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
		".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention", ".m.rule.roomnotif",
		".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits"},
	"content": {".m.rule.contains_user_name"},
	"underride": {".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one",
		".m.rule.message", ".m.rule.encrypted"},
}

// checkRuleset verifies the shape every client relies on and returns the
// rule IDs per kind.
func checkRuleset(t *testing.T, global map[string]any) map[string][]string {
	t.Helper()
	ids := map[string][]string{}
	for _, kind := range pushRuleKinds {
		list, ok := global[kind].([]any)
		if !ok {
			t.Fatalf("kind %s is not an array: %v", kind, global[kind])
		}
		for _, item := range list {
			rule := item.(map[string]any)
			id, _ := rule["rule_id"].(string)
			if id == "" {
				t.Fatalf("%s rule without rule_id: %v", kind, rule)
			}
			if _, ok := rule["default"].(bool); !ok {
				t.Errorf("%s/%s: default missing", kind, id)
			}
			if _, ok := rule["enabled"].(bool); !ok {
				t.Errorf("%s/%s: enabled missing", kind, id)
			}
			if _, ok := rule["actions"].([]any); !ok {
				t.Errorf("%s/%s: actions not an array: %v", kind, id, rule["actions"])
			}
			_, hasConds := rule["conditions"].([]any)
			if (kind == "override" || kind == "underride") != hasConds {
				t.Errorf("%s/%s: conditions array present=%v: %v", kind, id, hasConds, rule)
			}
			if kind == "content" {
				if _, ok := rule["pattern"].(string); !ok {
					t.Errorf("content/%s: pattern missing", id)
				}
			}
			ids[kind] = append(ids[kind], id)
		}
	}
	return ids
}

func getGlobalRules(t *testing.T, ts *testServer, token string) map[string]any {
	t.Helper()
	out := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/pushrules/", token, nil)
	g, ok := out["global"].(map[string]any)
	if !ok {
		t.Fatalf("no global ruleset: %v", out)
	}
	checkRuleset(t, g)
	return g
}

func findRule(g map[string]any, kind, id string) map[string]any {
	for _, item := range g[kind].([]any) {
		if r := item.(map[string]any); r["rule_id"] == id {
			return r
		}
	}
	return nil
}

func TestPushRulesDefaults(t *testing.T) {
	ts := newTestServer(t)
	alice, token := ts.createUser("alice")
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/pushrules/", "", nil)

	g := getGlobalRules(t, ts, token)
	ids := checkRuleset(t, g)
	for kind, want := range specDefaultRules {
		if !slices.Equal(ids[kind], want) {
			t.Errorf("%s rules: %v, want %v", kind, ids[kind], want)
		}
	}
	if len(ids["room"]) != 0 || len(ids["sender"]) != 0 {
		t.Errorf("unexpected room/sender rules: %v", ids)
	}
	for _, kind := range pushRuleKinds {
		for _, item := range g[kind].([]any) {
			if r := item.(map[string]any); r["default"] != true {
				t.Errorf("%s/%s: default = %v", kind, r["rule_id"], r["default"])
			}
		}
	}
	if m := findRule(g, "override", ".m.rule.master"); m["enabled"] != false || len(m["conditions"].([]any)) != 0 {
		t.Errorf("master: %v", m)
	}
	if c := findRule(g, "content", ".m.rule.contains_user_name"); c["pattern"] != "alice" {
		t.Errorf("contains_user_name: %v", c)
	}
	invite := findRule(g, "override", ".m.rule.invite_for_me")
	if conds := invite["conditions"].([]any); conds[2].(map[string]any)["pattern"] != alice {
		t.Errorf("invite_for_me: %v", invite)
	}
	mention := findRule(g, "override", ".m.rule.is_user_mention")
	if cond := mention["conditions"].([]any)[0].(map[string]any); cond["value"] != alice || cond["key"] != `content.m\.mentions.user_ids` {
		t.Errorf("is_user_mention: %v", mention)
	}
	tomb := findRule(g, "override", ".m.rule.tombstone")
	if cond := tomb["conditions"].([]any)[1].(map[string]any); cond["pattern"] != "" {
		t.Errorf("tombstone keeps the empty state_key pattern: %v", tomb)
	}
	if rm := findRule(g, "override", ".m.rule.is_room_mention"); rm["conditions"].([]any)[0].(map[string]any)["value"] != true {
		t.Errorf("is_room_mention: %v", rm)
	}

	// Other paths to the same data.
	noSlash := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/pushrules", token, nil)
	if _, ok := noSlash["global"].(map[string]any); !ok {
		t.Fatalf("/pushrules: %v", noSlash)
	}
	scope := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/pushrules/global/", token, nil)
	checkRuleset(t, scope)
	rule := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/pushrules/global/underride/.m.rule.message", token, nil)
	if rule["rule_id"] != ".m.rule.message" || rule["conditions"] == nil {
		t.Fatalf("single rule: %v", rule)
	}
	status, raw := ts.doRaw("GET", "/_matrix/client/v3/pushrules/global/override/", token, nil)
	var list []map[string]any
	if status != http.StatusOK || json.Unmarshal(raw, &list) != nil || len(list) != len(specDefaultRules["override"]) {
		t.Fatalf("kind list: %d %s", status, raw)
	}
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", "/_matrix/client/v3/pushrules/global/override/nope", token, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", "/_matrix/client/v3/pushrules/global/content/.m.rule.master", token, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/pushrules/global/bogus/x", token, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/pushrules/device/override/x", token, nil)
}

func TestPushRulesCRUD(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	alice, token := ts.createUser("alice")
	rule := func(kind, id string) string {
		return "/_matrix/client/v3/pushrules/global/" + kind + "/" + ephEsc(id)
	}
	notify := []any{"notify"}

	// Create override rules and order them with before/after.
	start := ts.Rooms().Notifier().Latest()
	ts.mustDo(http.StatusOK, "PUT", rule("override", "first"), token, map[string]any{
		"actions":    []any{"notify", map[string]any{"set_tweak": "sound", "value": "beep"}},
		"conditions": []any{map[string]any{"kind": "event_match", "key": "content.body", "pattern": "beer"}},
	})
	ephAdvanced(t, ts, start)
	ts.mustDo(http.StatusOK, "PUT", rule("override", "noconds"), token, map[string]any{"actions": notify})
	ts.mustDo(http.StatusOK, "PUT", rule("override", "last")+"?after=first", token, map[string]any{"actions": []any{"dont_notify"}})
	ts.mustDo(http.StatusOK, "PUT", rule("override", "top")+"?before=noconds", token, map[string]any{"actions": notify})
	g := getGlobalRules(t, ts, token)
	ids := checkRuleset(t, g)
	want := append([]string{".m.rule.master", "top", "noconds", "first", "last"}, specDefaultRules["override"][1:]...)
	if !slices.Equal(ids["override"], want) {
		t.Fatalf("override order: %v, want %v", ids["override"], want)
	}
	if r := findRule(g, "override", "noconds"); len(r["conditions"].([]any)) != 0 || r["default"] != false || r["enabled"] != true {
		t.Fatalf("rule without conditions: %v", r)
	}
	if r := findRule(g, "override", "last"); len(r["actions"].([]any)) != 0 {
		t.Fatalf("dont_notify was not stripped: %v", r)
	}

	// Updating keeps the position; content, room and sender rules.
	ts.mustDo(http.StatusOK, "PUT", rule("override", "first"), token, map[string]any{"actions": []any{},
		"conditions": []any{map[string]any{"kind": "event_match", "key": "content.body", "pattern": "wine"}}})
	ts.mustDo(http.StatusOK, "PUT", rule("content", "cake"), token, map[string]any{"pattern": "cake*lie", "actions": notify})
	ts.mustDo(http.StatusOK, "PUT", rule("room", "!room:localhost"), token, map[string]any{"actions": []any{}})
	ts.mustDo(http.StatusOK, "PUT", rule("sender", "@spam:localhost"), token, map[string]any{"actions": []any{}})
	ts.mustDo(http.StatusOK, "PUT", rule("underride", "under"), token, map[string]any{"actions": notify, "conditions": []any{}})
	g = getGlobalRules(t, ts, token)
	ids = checkRuleset(t, g)
	if !slices.Equal(ids["override"][:5], []string{".m.rule.master", "top", "noconds", "first", "last"}) {
		t.Fatalf("update moved the rule: %v", ids["override"])
	}
	if !slices.Equal(ids["content"], []string{"cake", ".m.rule.contains_user_name"}) || findRule(g, "content", "cake")["pattern"] != "cake*lie" {
		t.Fatalf("content rules: %v", g["content"])
	}
	if !slices.Equal(ids["room"], []string{"!room:localhost"}) || !slices.Equal(ids["sender"], []string{"@spam:localhost"}) {
		t.Fatalf("room/sender rules: %v %v", ids["room"], ids["sender"])
	}
	if ids["underride"][0] != "under" {
		t.Fatalf("underride: %v", ids["underride"])
	}

	// enabled and actions, on user and default rules.
	ts.mustDo(http.StatusOK, "PUT", rule("override", "top")+"/enabled", token, map[string]any{"enabled": false})
	if out := ts.mustDo(http.StatusOK, "GET", rule("override", "top")+"/enabled", token, nil); out["enabled"] != false {
		t.Fatalf("enabled: %v", out)
	}
	ts.mustDo(http.StatusOK, "PUT", rule("override", "top"), token, map[string]any{"actions": notify})
	if out := ts.mustDo(http.StatusOK, "GET", rule("override", "top")+"/enabled", token, nil); out["enabled"] != false {
		t.Fatalf("update re-enabled the rule: %v", out)
	}
	ts.mustDo(http.StatusOK, "PUT", rule("override", ".m.rule.master")+"/enabled", token, map[string]any{"enabled": true})
	ts.mustDo(http.StatusOK, "PUT", rule("underride", ".m.rule.message")+"/actions", token, map[string]any{"actions": []any{}})
	ts.mustDo(http.StatusOK, "PUT", rule("override", "first")+"/actions", token, map[string]any{"actions": []any{"notify", map[string]any{"set_tweak": "highlight", "value": false}}})
	g = getGlobalRules(t, ts, token)
	if r := findRule(g, "override", ".m.rule.master"); r["enabled"] != true || r["default"] != true {
		t.Fatalf("master after enabling: %v", r)
	}
	if out := ts.mustDo(http.StatusOK, "GET", rule("underride", ".m.rule.message")+"/actions", token, nil); len(out["actions"].([]any)) != 0 {
		t.Fatalf("default rule actions: %v", out)
	}
	out := ts.mustDo(http.StatusOK, "GET", rule("override", "first")+"/actions", token, nil)
	if acts := out["actions"].([]any); len(acts) != 2 || acts[1].(map[string]any)["value"] != false {
		t.Fatalf("user rule actions: %v", out)
	}
	if r := findRule(g, "override", "first"); r["conditions"] == nil || len(r["conditions"].([]any)) != 1 {
		t.Fatalf("actions update lost the conditions: %v", r)
	}

	// Delete.
	ts.mustDo(http.StatusOK, "DELETE", rule("override", "noconds"), token, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", rule("override", "noconds"), token, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "DELETE", rule("override", "noconds"), token, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "DELETE", rule("override", ".m.rule.master"), token, nil)
	getGlobalRules(t, ts, token)

	// The whole rule set reaches /sync as m.push_rules account data.
	ads, err := ts.DB().AccountDataSince(ctx, alice, start, ts.Rooms().Notifier().Latest())
	if err != nil || len(ads) != 1 || ads[0].Type != "m.push_rules" || ads[0].RoomID != "" {
		t.Fatalf("m.push_rules account data: %+v %v", ads, err)
	}
	var content map[string]map[string]any
	if err := json.Unmarshal(ads[0].Content, &content); err != nil {
		t.Fatal(err)
	}
	adIDs := checkRuleset(t, content["global"])
	if !slices.Contains(adIDs["override"], "top") || slices.Contains(adIDs["override"], "noconds") ||
		findRule(content["global"], "override", ".m.rule.master")["enabled"] != true {
		t.Fatalf("m.push_rules content: %v", adIDs)
	}

	// Errors.
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "PUT", rule("override", "x"), "", map[string]any{"actions": notify})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", rule("override", ".mine"), token, map[string]any{"actions": notify})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", rule("override", "a/b"), token, map[string]any{"actions": notify})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", rule("override", "x"), token, map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", rule("override", "x"), token, map[string]any{"actions": "notify"})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", rule("override", "x"), token, map[string]any{"actions": []any{"explode"}})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", rule("override", "x"), token, map[string]any{"actions": []any{map[string]any{"foo": 1}}})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", rule("override", "x"), token, map[string]any{"actions": notify, "conditions": []any{map[string]any{"key": "type"}}})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", rule("content", "x"), token, map[string]any{"actions": notify})
	ts.wantErr(http.StatusBadRequest, "M_UNKNOWN", "PUT", rule("override", "x")+"?before=missing", token, map[string]any{"actions": notify})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", rule("override", "x")+"?after=.m.rule.master", token, map[string]any{"actions": notify})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "PUT", rule("override", "x"), token, "{")
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "PUT", rule("override", "missing")+"/enabled", token, map[string]any{"enabled": true})
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "PUT", rule("override", "missing")+"/actions", token, map[string]any{"actions": notify})
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", rule("override", "missing")+"/actions", token, nil)
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", rule("override", "top")+"/enabled", token, map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", rule("override", "top")+"/enabled", token, map[string]any{"enabled": "yes"})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", rule("override", "top")+"/actions", token, map[string]any{})
	// Failed requests changed nothing.
	if _, err := ts.DB().PushRules(ctx, alice); err != nil {
		t.Fatal(err)
	}
	if findRule(getGlobalRules(t, ts, token), "override", "x") != nil {
		t.Fatal("a refused rule was stored")
	}
}

// ephTestRoom is a pushrules.Room for evaluating rules in tests.
type ephTestRoom struct{ members int }

func (r ephTestRoom) GetOwnDisplayname() string { return "Alice" }
func (r ephTestRoom) GetMemberCount() int       { return r.members }

func TestPushRulesForEval(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	alice, token := ts.createUser("alice")
	rs, err := ts.api.pushRulesForEval(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	msg := func(body string) *event.Event {
		return &event.Event{Type: event.EventMessage, Sender: id.UserID("@bob:localhost"), RoomID: "!r:localhost",
			Content: event.Content{Raw: map[string]any{"msgtype": "m.text", "body": body}}}
	}
	if acts := rs.GetActions(ephTestRoom{members: 5}, msg("hello")); !acts.Should().Notify || acts.Should().Highlight {
		t.Fatalf("plain message: %+v", acts)
	}
	if acts := rs.GetActions(ephTestRoom{members: 5}, msg("hey alice, look")); !acts.Should().Highlight {
		t.Fatalf("localpart mention: %+v", acts)
	}
	// A user rule muting the room wins over the default message rule.
	ts.mustDo(http.StatusOK, "PUT", "/_matrix/client/v3/pushrules/global/room/"+ephEsc("!r:localhost"), token, map[string]any{"actions": []any{}})
	rs, err = ts.api.pushRulesForEval(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	if acts := rs.GetActions(ephTestRoom{members: 5}, msg("hello")); acts.Should().Notify {
		t.Fatalf("muted room: %+v", acts)
	}
	var _ pushrules.Room = ephTestRoom{}
}
