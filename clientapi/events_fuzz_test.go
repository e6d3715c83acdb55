package clientapi

import (
	"net/http"
	"net/url"
	"testing"
)

// FuzzEventContent sends fuzzed event content (and types, state keys and
// txnIds) through send, state and redact, so every event passes
// gomatrixserverlib's building, canonical JSON, hashing, signing, size and
// auth checks and storage. Seeds cover unicode edge cases (lone
// surrogates, NUL, BOM, RTL marks, invalid UTF-8), nesting at and past the
// depth limit, and numbers canonical JSON cannot represent. Beyond the
// common oracle: an accepted event must read back through /event,
// /messages and an incremental /sync.
func FuzzEventContent(f *testing.F) {
	env := newFuzzEnv(f)
	since := ""
	f.Add(uint8(0), "m.room.message", "t1", []byte(`{"msgtype":"m.text","body":"hello"}`))
	f.Add(uint8(1), "m.room.topic", "", []byte(`{"topic":"\ud83d\ude00 \u202e RTL"}`))
	f.Add(uint8(1), "m.room.power_levels", "", []byte(`{"users":{"@fuzzer:localhost":100},"users_default":9007199254740993}`))
	f.Add(uint8(2), "", "r1", []byte(`{"reason":"spam"}`))
	f.Add(uint8(3), "m.room.message", "", []byte(`{"body":1e400}`))
	f.Fuzz(func(t *testing.T, kind uint8, evType, key string, body []byte) {
		evType, body = env.expand(evType), env.expandBytes(body)
		var method, target string
		switch kind % 4 {
		case 0: // PUT /send/{type}/{txnId}
			method, target = "PUT", env.roomPath("/send/"+pathSeg(evType)+"/"+pathSeg(key))
		case 1: // PUT /state/{type}/{stateKey}
			method, target = "PUT", env.roomPath("/state/"+pathSeg(evType)+"/"+pathSeg(key))
		case 2: // PUT /redact/{eventId}/{txnId}: the env's event or a fuzzed id
			id := env.event
			if evType != "" {
				id = evType
			}
			method, target = "PUT", env.roomPath("/redact/"+pathSeg(id)+"/"+pathSeg(key))
		case 3: // POST /send/{type} (r0, no txnId)
			method, target = "POST", env.roomPath("/send/"+pathSeg(evType))
		}
		status, out := env.call(t, method, target, env.token, body)
		if status == http.StatusOK {
			id := jsonField(out, "event_id")
			if id == "" {
				t.Fatalf("%s %s: 200 without event_id: %s", method, target, out)
			}
			if st, raw := env.call(t, "GET", env.roomPath("/event/"+url.PathEscape(id)), env.token, nil); st != http.StatusOK {
				t.Fatalf("accepted event %s does not read back: %d %s", id, st, raw)
			}
			if st, raw := env.call(t, "GET", env.roomPath("/messages?dir=b&limit=3"), env.token, nil); st != http.StatusOK {
				t.Fatalf("/messages after accepting %s: %d %s", id, st, raw)
			}
			q := "/sync?timeout=0"
			if since != "" {
				q += "&since=" + url.QueryEscape(since)
			}
			st, raw := env.call(t, "GET", fuzzV3+q, env.token, nil)
			if st != http.StatusOK {
				t.Fatalf("/sync after accepting %s: %d %s", id, st, raw)
			}
			since = jsonField(raw, "next_batch")
		}
		env.repair(t, target, status)
	})
}
