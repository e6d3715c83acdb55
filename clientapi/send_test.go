package clientapi

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/agentspace/agentspace/storage"
)

// rmSecondDevice logs userID in on another device and returns its token.
func rmSecondDevice(t *testing.T, ts *testServer, userID, deviceID string) string {
	t.Helper()
	ctx := context.Background()
	token := storage.NewToken("syt_")
	err := ts.db.Write(ctx, func(tx *storage.Tx) error {
		now := time.Now().UnixMilli()
		if err := tx.UpsertDevice(ctx, &storage.Device{UserID: userID, DeviceID: deviceID, CreatedTS: now}); err != nil {
			return err
		}
		return tx.InsertAccessToken(ctx, &storage.AccessToken{TokenHash: storage.HashToken(token), UserID: userID, DeviceID: deviceID, CreatedTS: now})
	})
	if err != nil {
		t.Fatal(err)
	}
	return token
}

func rmCountEvents(t *testing.T, ts *testServer, roomID, eventType string) int {
	t.Helper()
	evs, err := ts.db.RoomEvents(context.Background(), roomID, 1<<62, 0, true, 100000, &storage.EventFilter{Types: []string{eventType}})
	if err != nil {
		t.Fatal(err)
	}
	return len(evs)
}

func TestSendTransactionIDs(t *testing.T) {
	ts := rmNewServer(t)
	alice, aliceTok := ts.createUser("alice")
	otherTok := rmSecondDevice(t, ts, alice, "OTHERDEVICE")
	roomID := rmCreate(t, ts, aliceTok, nil)
	path := rmRoomPath(roomID, "/send/m.room.message/txn-1")
	body := map[string]any{"msgtype": "m.text", "body": "once"}

	first := ts.mustDo(http.StatusOK, "PUT", path, aliceTok, body)["event_id"]
	second := ts.mustDo(http.StatusOK, "PUT", path, aliceTok, body)["event_id"]
	if first == nil || first != second {
		t.Fatalf("same txnId from the same device: %v then %v", first, second)
	}
	other := ts.mustDo(http.StatusOK, "PUT", path, otherTok, body)["event_id"]
	if other == first {
		t.Fatalf("same txnId from another device returned the same event %v", other)
	}
	if n := rmCountEvents(t, ts, roomID, "m.room.message"); n != 2 {
		t.Fatalf("%d messages, want 2", n)
	}
	// The sending device sees its transaction_id; others do not.
	ev := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/event/"+url.PathEscape(first.(string))), aliceTok, nil)
	if ev["unsigned"].(map[string]any)["transaction_id"] != "txn-1" {
		t.Fatalf("sender's device view: %v", ev)
	}
	ev = ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/event/"+url.PathEscape(first.(string))), otherTok, nil)
	if _, ok := ev["unsigned"].(map[string]any)["transaction_id"]; ok {
		t.Fatalf("other device sees transaction_id: %v", ev)
	}
	// The r0 POST form without a txnId.
	if out := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/r0/rooms/"+url.PathEscape(roomID)+"/send/m.room.message", aliceTok, body); out["event_id"] == nil {
		t.Fatalf("POST send: %v", out)
	}
	// Custom event types and txn ids needing escapes.
	ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/send/org.example.ping/"+url.PathEscape("a/b")), aliceTok, map[string]any{})
}

func TestSendErrors(t *testing.T) {
	ts := rmNewServer(t)
	_, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	roomID := rmCreate(t, ts, aliceTok, nil)
	path := rmRoomPath(roomID, "/send/m.room.message/t1")

	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "PUT", path, "", map[string]any{"body": "x"})
	ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "PUT", path, "bogus", map[string]any{"body": "x"})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "PUT", path, aliceTok, "not json")
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", path, aliceTok, `["a"]`)
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", path, aliceTok, `"string"`)
	// Not a member; unknown room: the same 403.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", path, bobTok, map[string]any{"body": "x"})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", rmRoomPath("!nope:"+ts.cfg.ServerName, "/send/m.room.message/t1"), aliceTok, map[string]any{"body": "x"})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", rmRoomPath("nope", "/send/m.room.message/t1"), aliceTok, map[string]any{"body": "x"})
	// Events over 64 KiB.
	big := strings.Repeat("x", 70000)
	status, out := ts.do("PUT", rmRoomPath(roomID, "/send/m.room.message/big"), aliceTok, map[string]any{"body": big})
	if status != http.StatusRequestEntityTooLarge || out["errcode"] != "M_TOO_LARGE" {
		t.Fatalf("oversized event: %d %v", status, out)
	}
	// Power levels: events_default raised to 50 keeps bob (PL 0) quiet.
	rmJoinPublic := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat",
		"power_level_content_override": map[string]any{"events_default": 50}})
	rmJoin(t, ts, bobTok, rmJoinPublic)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", rmRoomPath(rmJoinPublic, "/send/m.room.message/t2"), bobTok, map[string]any{"body": "x"})
	// After leaving, sending is forbidden.
	room2 := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat"})
	rmJoin(t, ts, bobTok, room2)
	rmSend(t, ts, bobTok, room2, "hi")
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(room2, "/leave"), bobTok, map[string]any{})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", rmRoomPath(room2, "/send/m.room.message/t3"), bobTok, map[string]any{"body": "x"})
}

func TestRedactions(t *testing.T) {
	ts := rmNewServer(t)
	alice, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	roomID := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat"})
	rmJoin(t, ts, bobTok, roomID)
	aliceMsg := rmSend(t, ts, aliceTok, roomID, "secret from alice")
	bobMsg := rmSend(t, ts, bobTok, roomID, "oops from bob")

	// A non-admin cannot redact someone else's event.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", rmRoomPath(roomID, "/redact/"+url.PathEscape(aliceMsg)+"/r1"), bobTok, map[string]any{})
	// Anyone may redact their own; the txnId makes it idempotent.
	p := rmRoomPath(roomID, "/redact/"+url.PathEscape(bobMsg)+"/r2")
	red1 := ts.mustDo(http.StatusOK, "PUT", p, bobTok, map[string]any{"reason": "typo"})["event_id"]
	red2 := ts.mustDo(http.StatusOK, "PUT", p, bobTok, map[string]any{"reason": "typo"})["event_id"]
	if red1 == nil || red1 != red2 {
		t.Fatalf("redaction txn: %v vs %v", red1, red2)
	}
	if n := rmCountEvents(t, ts, roomID, "m.room.redaction"); n != 1 {
		t.Fatalf("%d redactions, want 1", n)
	}
	// The admin (PL 100) redacts alice's own and is allowed bob's too.
	ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/redact/"+url.PathEscape(aliceMsg)+"/r3"), aliceTok, map[string]any{})

	// The redacted event has empty content and says why.
	ev := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/event/"+url.PathEscape(bobMsg)), aliceTok, nil)
	if c := ev["content"].(map[string]any); len(c) != 0 {
		t.Fatalf("redacted content = %v", c)
	}
	because, _ := ev["unsigned"].(map[string]any)["redacted_because"].(map[string]any)
	if because == nil || because["event_id"] != red1 || because["type"] != "m.room.redaction" {
		t.Fatalf("redacted_because = %v", ev["unsigned"])
	}
	// The redaction event itself names its target.
	red := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/event/"+url.PathEscape(red1.(string))), aliceTok, nil)
	if red["redacts"] != bobMsg || red["content"].(map[string]any)["reason"] != "typo" {
		t.Fatalf("redaction event = %v", red)
	}
	// A v11 redaction sent through /send still redacts, and still checks permissions.
	m2 := rmSend(t, ts, aliceTok, roomID, "second")
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", rmRoomPath(roomID, "/send/m.room.redaction/s1"), bobTok, map[string]any{"redacts": m2})
	ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/send/m.room.redaction/s2"), aliceTok, map[string]any{"redacts": m2})
	if c := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/event/"+url.PathEscape(m2)), aliceTok, nil)["content"].(map[string]any); len(c) != 0 {
		t.Fatalf("content after /send redaction = %v", c)
	}
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", rmRoomPath(roomID, "/send/m.room.redaction/s3"), aliceTok, map[string]any{})

	// Errors.
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", rmRoomPath(roomID, "/redact/notanevent/r4"), aliceTok, map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", rmRoomPath(roomID, "/redact/"+url.PathEscape(aliceMsg)+"/r5"), aliceTok, map[string]any{"reason": 5})
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "PUT", rmRoomPath(roomID, "/redact/"+url.PathEscape(aliceMsg)+"/r6"), "", map[string]any{})
	_ = alice
}

func TestGetEvent(t *testing.T) {
	ts := rmNewServer(t)
	alice, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	roomID := rmCreate(t, ts, aliceTok, nil)
	other := rmCreate(t, ts, aliceTok, nil)
	msg := rmSend(t, ts, aliceTok, roomID, "hello")

	ev := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/event/"+url.PathEscape(msg)), aliceTok, nil)
	if ev["event_id"] != msg || ev["sender"] != alice || ev["room_id"] != roomID || ev["type"] != "m.room.message" ||
		ev["content"].(map[string]any)["body"] != "hello" || ev["origin_server_ts"] == nil {
		t.Fatalf("event = %v", ev)
	}
	// Wrong room, outsider, unknown: all 404.
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", rmRoomPath(other, "/event/"+url.PathEscape(msg)), aliceTok, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", rmRoomPath(roomID, "/event/"+url.PathEscape(msg)), bobTok, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", rmRoomPath(roomID, "/event/"+url.PathEscape("$missing")), aliceTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", rmRoomPath(roomID, "/event/missing"), aliceTok, nil)
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", rmRoomPath(roomID, "/event/"+url.PathEscape(msg)), "", nil)
}
