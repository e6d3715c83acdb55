package clientapi

import (
	"testing"
)

// Request-body fuzz targets, one per endpoint family. Each input is
// (route selector, path parameter, body); see harness_fuzz_test.go for the
// oracle. Routes that can destroy the session they are called with run as
// a throwaway user.

func fixed(p string) func(*fuzzEnv, string) string {
	return func(*fuzzEnv, string) string { return fuzzV3 + p }
}

var accountRoutes = []fuzzRoute{
	{method: "POST", path: fixed("/register")},
	{method: "POST", path: fixed("/register?kind=guest")},
	{method: "POST", path: fixed("/login")},
	{method: "POST", path: fixed("/refresh")},
	{method: "POST", path: fixed("/account/password"), victim: true},
	{method: "POST", path: fixed("/account/deactivate"), victim: true},
	{method: "POST", path: fixed("/logout"), victim: true},
	{method: "POST", path: fixed("/logout/all"), victim: true},
	{method: "PUT", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/devices/" + pathSeg(p) }},
	{method: "DELETE", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/devices/" + pathSeg(p) }, victim: true},
	{method: "POST", path: fixed("/delete_devices"), victim: true},
	{method: "PUT", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/profile/" + pathSeg(env.user) + "/displayname" }},
	{method: "PUT", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/profile/" + pathSeg(env.user) + "/avatar_url" }},
	{method: "POST", path: fixed("/user_directory/search")},
	{method: "POST", path: fixed("/account/3pid/email/requestToken")},
	{method: "POST", path: func(*fuzzEnv, string) string { return "/_synapse/admin/v1/register" }},
}

// FuzzAccountBodies: registration, login, refresh, password, deactivation,
// logout, devices, profile, user directory, shared-secret registration.
func FuzzAccountBodies(f *testing.F) {
	env := newFuzzEnv(f)
	f.Add(uint8(0), "", []byte(`{"username":"newbie","password":"pw","auth":{"type":"m.login.dummy"}}`))
	f.Add(uint8(2), "", []byte(`{"type":"m.login.password","identifier":{"type":"m.id.user","user":"fuzzer"},"password":"x"}`))
	f.Add(uint8(8), "DEVFUZZER", []byte(`{"display_name":"phone"}`))
	f.Add(uint8(11), "", []byte(`{"displayname":"Fuzzy \u202e McFuzz"}`))
	f.Add(uint8(13), "", []byte(`{"search_term":"fuzz","limit":10}`))
	f.Fuzz(func(t *testing.T, sel uint8, param string, body []byte) {
		env.runBody(t, accountRoutes, sel, param, body)
	})
}

var roomRoutes = []fuzzRoute{
	{method: "POST", path: fixed("/createRoom")},
	{method: "POST", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/join/" + pathSeg(p) }},
	{method: "POST", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/knock/" + pathSeg(p) }},
	{method: "POST", path: func(env *fuzzEnv, p string) string { return env.roomPath("/join") }},
	{method: "POST", path: func(env *fuzzEnv, p string) string { return env.roomPath("/invite") }},
	{method: "POST", path: func(env *fuzzEnv, p string) string { return env.roomPath("/kick") }},
	{method: "POST", path: func(env *fuzzEnv, p string) string { return env.roomPath("/ban") }},
	{method: "POST", path: func(env *fuzzEnv, p string) string { return env.roomPath("/unban") }},
	{method: "POST", path: func(env *fuzzEnv, p string) string { return env.roomPath("/leave") }},
	{method: "POST", path: func(env *fuzzEnv, p string) string { return env.roomPath("/forget") }},
	{method: "PUT", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/directory/room/" + pathSeg(p) }},
	{method: "PUT", path: func(env *fuzzEnv, p string) string {
		return fuzzV3 + "/directory/list/room/" + pathSeg(env.room)
	}},
	{method: "POST", path: fixed("/publicRooms")},
	{method: "POST", path: fixed("/search")},
}

// FuzzRoomBodies: createRoom, join/knock by id or alias, membership
// changes, aliases, room directory, publicRooms and search.
func FuzzRoomBodies(f *testing.F) {
	env := newFuzzEnv(f)
	f.Add(uint8(0), "", []byte(`{"preset":"private_chat","name":"n","topic":"t","room_version":"11","initial_state":[{"type":"m.room.guest_access","state_key":"","content":{"guest_access":"can_join"}}]}`))
	f.Add(uint8(0), "", []byte(`{"power_level_content_override":{"users_default":1e400},"creation_content":{"m.federate":false}}`))
	f.Add(uint8(1), "#nowhere:localhost", []byte(`{"reason":"hi"}`))
	f.Add(uint8(4), "", []byte(`{"user_id":"@other:localhost"}`))
	f.Add(uint8(6), "", []byte(`{"user_id":"@other:localhost","reason":"\u0000"}`))
	f.Add(uint8(10), "#alias:localhost", []byte(`{"room_id":"$ROOM"}`))
	f.Add(uint8(12), "", []byte(`{"limit":5,"filter":{"generic_search_term":"x"},"since":"garbage"}`))
	f.Add(uint8(13), "", []byte(`{"search_categories":{"room_events":{"search_term":"seed","filter":{"limit":3},"order_by":"rank","event_context":{"before_limit":2}}}}`))
	f.Fuzz(func(t *testing.T, sel uint8, param string, body []byte) {
		env.runBody(t, roomRoutes, sel, param, body)
	})
}

var ephemeralRoutes = []fuzzRoute{
	{method: "PUT", path: func(env *fuzzEnv, p string) string { return env.roomPath("/typing/" + pathSeg(env.user)) }},
	{method: "POST", path: func(env *fuzzEnv, p string) string {
		return env.roomPath("/receipt/" + pathSeg(p) + "/" + pathSeg(env.event))
	}},
	{method: "POST", path: func(env *fuzzEnv, p string) string { return env.roomPath("/read_markers") }},
	{method: "PUT", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/presence/" + pathSeg(env.user) + "/status" }},
	{method: "PUT", path: func(env *fuzzEnv, p string) string {
		return fuzzV3 + "/user/" + pathSeg(env.user) + "/account_data/" + pathSeg(p)
	}},
	{method: "PUT", path: func(env *fuzzEnv, p string) string {
		return fuzzV3 + "/user/" + pathSeg(env.user) + "/rooms/" + pathSeg(env.room) + "/account_data/" + pathSeg(p)
	}},
	{method: "POST", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/user/" + pathSeg(env.user) + "/filter" }},
	{method: "PUT", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/pushrules/global/override/" + pathSeg(p) }},
	{method: "PUT", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/pushrules/global/content/" + pathSeg(p) }},
	{method: "PUT", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/pushrules/global/room/" + pathSeg(env.room) }},
	{method: "PUT", path: func(env *fuzzEnv, p string) string {
		return fuzzV3 + "/pushrules/global/underride/.m.rule.message/" + pathSeg(p)
	}},
	{method: "PUT", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/sendToDevice/" + pathSeg(p) + "/txn1" }},
}

// FuzzEphemeralBodies: typing, receipts, read markers, presence, account
// data, filters, push rules and to-device messages.
func FuzzEphemeralBodies(f *testing.F) {
	env := newFuzzEnv(f)
	f.Add(uint8(0), "", []byte(`{"typing":true,"timeout":30000}`))
	f.Add(uint8(1), "m.read", []byte(`{"thread_id":"main"}`))
	f.Add(uint8(2), "", []byte(`{"m.fully_read":"$x","m.read":"$y","m.read.private":"$z"}`))
	f.Add(uint8(3), "", []byte(`{"presence":"online","status_msg":"busy"}`))
	f.Add(uint8(4), "m.direct", []byte(`{"@other:localhost":["!a:localhost"]}`))
	f.Add(uint8(6), "", []byte(`{"room":{"timeline":{"limit":10,"types":["m.*"]},"state":{"lazy_load_members":true}},"event_fields":["content.body"]}`))
	f.Add(uint8(7), "rule", []byte(`{"actions":["notify",{"set_tweak":"sound","value":"default"}],"conditions":[{"kind":"event_match","key":"content.body","pattern":"*x*"}]}`))
	f.Add(uint8(10), "actions", []byte(`{"actions":["dont_notify"]}`))
	f.Add(uint8(11), "m.test", []byte(`{"messages":{"@other:localhost":{"*":{"k":"v"}}}}`))
	f.Fuzz(func(t *testing.T, sel uint8, param string, body []byte) {
		env.runBody(t, ephemeralRoutes, sel, param, body)
	})
}

var keysRoutes = []fuzzRoute{
	{method: "POST", path: fixed("/keys/upload")},
	{method: "POST", path: fixed("/keys/query")},
	{method: "POST", path: fixed("/keys/claim")},
	{method: "POST", path: fixed("/keys/device_signing/upload")},
	{method: "POST", path: fixed("/keys/signatures/upload")},
	{method: "PUT", path: func(env *fuzzEnv, p string) string { return fuzzV3 + "/room_keys/version/" + pathSeg(p) }},
}

// FuzzKeysBodies: end-to-end encryption key upload, query, claim,
// cross-signing and signature upload.
func FuzzKeysBodies(f *testing.F) {
	env := newFuzzEnv(f)
	f.Add(uint8(0), "", []byte(`{"device_keys":{"user_id":"@fuzzer:localhost","device_id":"DEVFUZZER","algorithms":["m.olm.v1.curve25519-aes-sha2"],"keys":{"curve25519:DEVFUZZER":"abc","ed25519:DEVFUZZER":"def"},"signatures":{}},"one_time_keys":{"signed_curve25519:AAAA":{"key":"k","signatures":{}}}}`))
	f.Add(uint8(1), "", []byte(`{"device_keys":{"@fuzzer:localhost":[],"@other:localhost":["X"]},"timeout":10}`))
	f.Add(uint8(2), "", []byte(`{"one_time_keys":{"@fuzzer:localhost":{"DEVFUZZER":"signed_curve25519"}}}`))
	f.Add(uint8(3), "", []byte(`{"master_key":{"user_id":"@fuzzer:localhost","usage":["master"],"keys":{"ed25519:m":"m"}}}`))
	f.Add(uint8(4), "", []byte(`{"@fuzzer:localhost":{"DEVFUZZER":{"signatures":{"@fuzzer:localhost":{"ed25519:m":"s"}}}}}`))
	f.Fuzz(func(t *testing.T, sel uint8, param string, body []byte) {
		env.runBody(t, keysRoutes, sel, param, body)
	})
}
