package bridge

import (
	"testing"

	"github.com/agentspace/agentspace/storage"
)

func TestSignature(t *testing.T) {
	body := []byte(`{"room":"!r:x","body":"hi"}`)
	sig := Sign("s3cret", body)
	// echo -n '{"room":"!r:x","body":"hi"}' | openssl dgst -sha256 -hmac s3cret
	if want := "sha256=02c2287da64d93cd0007798c12ffa9b43e3105b3a1ed4109b50bfa8bfbc29378"; sig != want {
		t.Fatalf("signature %q, want %q", sig, want)
	}
	if !VerifySignature("s3cret", body, sig) {
		t.Error("a signature does not verify")
	}
	for _, bad := range []struct {
		secret string
		body   string
		sig    string
	}{
		{"other", string(body), sig},
		{"s3cret", string(body) + " ", sig},
		{"s3cret", string(body), sig[:len(sig)-1] + "0"},
		{"s3cret", string(body), ""},
	} {
		if VerifySignature(bad.secret, []byte(bad.body), bad.sig) {
			t.Errorf("verified a bad signature: %+v", bad)
		}
	}
}

func TestMessageOf(t *testing.T) {
	sk := ""
	for _, c := range []struct {
		e    storage.Event
		ok   bool
		body string
	}{
		{storage.Event{Type: "m.room.message", PDUJSON: []byte(`{"content":{"msgtype":"m.text","body":"hi"}}`)}, true, "hi"},
		{storage.Event{Type: "m.room.message", PDUJSON: []byte(`{"content":{}}`)}, false, ""}, // redacted
		{storage.Event{Type: "m.room.message", PDUJSON: []byte(`{"content":{"body":5}}`)}, false, ""},
		{storage.Event{Type: "m.room.topic", PDUJSON: []byte(`{"content":{"body":"x"}}`)}, false, ""},
		{storage.Event{Type: "m.room.message", StateKey: &sk, PDUJSON: []byte(`{"content":{"body":"x"}}`)}, false, ""},
	} {
		m, ok := MessageOf(&c.e)
		if ok != c.ok || m.Body != c.body {
			t.Errorf("MessageOf(%s %s) = %+v %v", c.e.Type, c.e.PDUJSON, m, ok)
		}
	}
	if Localpart("@alice:example.com") != "alice" {
		t.Error("Localpart")
	}
}
