package clientapi

import (
	"net/url"
	"testing"
)

// FuzzQueryParams fuzzes the query parameters of the read endpoints:
// inline JSON filters, sync and pagination tokens, directions, limits and
// the like. /sync always gets timeout=0 so an input cannot make it wait.
func FuzzQueryParams(f *testing.F) {
	env := newFuzzEnv(f)
	f.Add(uint8(0), `{"room":{"timeline":{"limit":1}}}`, "s1", "true")
	f.Add(uint8(0), `{"room":{"rooms":[],"timeline":{"not_types":["*"]}}}`, "s9223372036854775807", "")
	f.Add(uint8(0), "", "s5_3", "online")
	f.Add(uint8(1), `{"lazy_load_members":true,"types":["m.room.message"],"senders":["@fuzzer:localhost"]}`, "s0", "f")
	f.Add(uint8(1), `{"limit":-1}`, "t3-2", "b")
	f.Add(uint8(2), `{"contains_url":true}`, "5", "")
	f.Add(uint8(3), "join", "leave", "s1")
	f.Add(uint8(4), "m.thread", "s2", "true")
	f.Add(uint8(5), "all", "s1", "")
	f.Add(uint8(6), "s0", "s99", "")
	f.Add(uint8(7), "10", "garbage", "localhost")
	f.Add(uint8(8), "user", "", "")
	f.Add(uint8(9), "crop", "96", "-1")
	f.Fuzz(func(t *testing.T, sel uint8, a, b, c string) {
		var target string
		switch sel % 10 {
		case 0:
			target = fuzzV3 + "/sync?" + url.Values{"filter": {a}, "since": {b}, "set_presence": {c}, "full_state": {c}, "timeout": {"0"}}.Encode()
		case 1:
			target = env.roomPath("/messages?" + url.Values{"filter": {a}, "from": {b}, "dir": {c}, "to": {b}, "limit": {c}}.Encode())
		case 2:
			target = env.roomPath("/context/" + pathSeg(env.event) + "?" + url.Values{"filter": {a}, "limit": {b}}.Encode())
		case 3:
			target = env.roomPath("/members?" + url.Values{"membership": {a}, "not_membership": {b}, "at": {c}}.Encode())
		case 4:
			target = "/_matrix/client/v1/rooms/" + url.PathEscape(env.room) + "/relations/" + pathSeg(env.event) + "/" + pathSeg(a) +
				"?" + url.Values{"from": {b}, "recurse": {c}, "limit": {c}, "dir": {c}}.Encode()
		case 5:
			target = "/_matrix/client/v1/rooms/" + url.PathEscape(env.room) + "/threads?" + url.Values{"include": {a}, "from": {b}, "limit": {c}}.Encode()
		case 6:
			target = fuzzV3 + "/keys/changes?" + url.Values{"from": {a}, "to": {b}}.Encode()
		case 7:
			target = fuzzV3 + "/publicRooms?" + url.Values{"limit": {a}, "since": {b}, "server": {c}}.Encode()
		case 8:
			target = fuzzV3 + "/register/available?" + url.Values{"username": {a}}.Encode()
		case 9:
			target = "/_matrix/media/v3/thumbnail/localhost/" + pathSeg(a) + "?" + url.Values{"method": {a}, "width": {b}, "height": {c}}.Encode()
		}
		env.call(t, "GET", target, env.token, nil)
	})
}

// FuzzPathIDs fuzzes the identifiers in request paths: user ids, room ids
// and aliases, event ids, device ids, push rule ids, account data types,
// media ids. Each is percent-encoded as a client would send it.
func FuzzPathIDs(f *testing.F) {
	env := newFuzzEnv(f)
	f.Add(uint8(0), "@fuzzer:localhost", "")
	f.Add(uint8(0), "@\u0000:localhost", "")
	f.Add(uint8(1), "!room:localhost", "m.room.name")
	f.Add(uint8(2), "!room:localhost", "$event")
	f.Add(uint8(3), "#alias:localhost", "")
	f.Add(uint8(3), "#:", "")
	f.Add(uint8(4), "!x", "")
	f.Add(uint8(5), "DEVICE", "")
	f.Add(uint8(6), "override", ".m.rule.master")
	f.Add(uint8(7), "m.push_rules", "")
	f.Add(uint8(8), "localhost", "AAAA")
	f.Add(uint8(9), "@fuzzer:localhost", "displayname")
	f.Add(uint8(10), "@fuzzer:localhost", "")
	f.Add(uint8(11), "!room:localhost", "@fuzzer:localhost")
	f.Fuzz(func(t *testing.T, sel uint8, a, b string) {
		var method, target string
		var body []byte
		method = "GET"
		switch sel % 12 {
		case 0:
			target = fuzzV3 + "/profile/" + pathSeg(a)
		case 1:
			target = fuzzV3 + "/rooms/" + pathSeg(a) + "/state/" + pathSeg(b) + "/"
		case 2:
			target = fuzzV3 + "/rooms/" + pathSeg(a) + "/event/" + pathSeg(b)
		case 3:
			target = fuzzV3 + "/directory/room/" + pathSeg(a)
		case 4:
			method, target, body = "POST", fuzzV3+"/join/"+pathSeg(a), []byte(`{}`)
		case 5:
			target = fuzzV3 + "/devices/" + pathSeg(a)
		case 6:
			target = fuzzV3 + "/pushrules/global/" + pathSeg(a) + "/" + pathSeg(b)
		case 7:
			target = fuzzV3 + "/user/" + pathSeg(env.user) + "/account_data/" + pathSeg(a)
		case 8:
			target = "/_matrix/client/v1/media/download/" + pathSeg(a) + "/" + pathSeg(b)
		case 9:
			target = fuzzV3 + "/profile/" + pathSeg(a) + "/" + pathSeg(b)
		case 10:
			target = fuzzV3 + "/presence/" + pathSeg(a) + "/status"
		case 11:
			method, target, body = "PUT", fuzzV3+"/rooms/"+pathSeg(a)+"/typing/"+pathSeg(b), []byte(`{"typing":false}`)
		}
		env.call(t, method, target, env.token, body)
	})
}

// FuzzMediaUpload uploads fuzzed bytes with a fuzzed content type and
// asks for a thumbnail, so the image decoders (PNG, JPEG, GIF, WebP) see
// untrusted input. Decompression bombs must be refused, not decoded.
func FuzzMediaUpload(f *testing.F) {
	env := newFuzzEnv(f)
	// A 1×1 PNG, and one that declares a 100000×100000 canvas.
	f.Add("image/png", []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82"))
	f.Add("image/png", []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01\x86\xa0\x00\x01\x86\xa0\x08\x06\x00\x00\x00\x00\x00\x00\x00"))
	f.Add("image/gif", []byte("GIF89a\x01\x00\x01\x00\x00\x00\x00;"))
	f.Add("image/jpeg", []byte("\xff\xd8\xff\xdb\x00C\x00"))
	f.Add("image/webp", []byte("RIFF\x1a\x00\x00\x00WEBPVP8 "))
	f.Add("text/plain; charset=\"", []byte("hello"))
	f.Fuzz(func(t *testing.T, ctype string, data []byte) {
		req := "/_matrix/media/v3/upload?filename=f"
		status, out := env.callWithType(t, "POST", req, env.token, ctype, data)
		if status != 200 {
			return
		}
		uri := jsonField(out, "content_uri")
		u, err := url.Parse(uri)
		if err != nil || u.Scheme != "mxc" {
			t.Fatalf("upload answered content_uri %q", uri)
		}
		env.call(t, "GET", "/_matrix/client/v1/media/thumbnail/"+u.Host+u.Path+"?width=32&height=32&method=scale", env.token, nil)
		env.call(t, "GET", "/_matrix/client/v1/media/download/"+u.Host+u.Path, env.token, nil)
	})
}
