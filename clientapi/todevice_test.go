package clientapi

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/agentspace/agentspace/storage"
)

func TestSendToDevice(t *testing.T) {
	ts := newTestServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	ctx := context.Background()
	inbox := func(userID, deviceID string) []storage.ToDeviceMessage {
		t.Helper()
		msgs, err := ts.db.ToDeviceSince(ctx, userID, deviceID, 0, ts.rooms.Notifier().Latest(), 100)
		if err != nil {
			t.Fatal(err)
		}
		return msgs
	}

	// Bob's sync would be waiting; the send must wake it.
	wake := ts.rooms.Notifier().Listen(bob, ts.rooms.Notifier().Latest())
	body := map[string]any{"messages": map[string]any{
		bob:                     map[string]any{"DEVBOB": map[string]any{"secret": "for bob"}, "NODEVICE": map[string]any{"x": 1}},
		"@carol:remote.example": map[string]any{"D": map[string]any{"x": 1}}, // not ours: dropped
	}}
	out := ts.mustDo(200, "PUT", "/_matrix/client/v3/sendToDevice/m.test/txn1", aliceTok, body)
	if len(out) != 0 {
		t.Fatalf("response = %v, want {}", out)
	}
	select {
	case <-wake:
	case <-time.After(5 * time.Second):
		t.Fatal("bob was not woken by the to-device message")
	}
	msgs := inbox(bob, "DEVBOB")
	if len(msgs) != 1 || msgs[0].Sender != alice || msgs[0].Type != "m.test" {
		t.Fatalf("bob's inbox = %+v", msgs)
	}
	var content map[string]any
	if err := json.Unmarshal(msgs[0].Content, &content); err != nil || content["secret"] != "for bob" {
		t.Fatalf("content = %s", msgs[0].Content)
	}
	if other := inbox(alice, "DEVALICE"); len(other) != 0 {
		t.Fatalf("alice's device got %+v", other)
	}
	if other := inbox(bob, "NODEVICE"); len(other) != 0 {
		t.Fatalf("message to an unknown device was stored: %+v", other)
	}

	// Same txn id again: not delivered twice. Same id for another event
	// type, or a new id: delivered.
	ts.mustDo(200, "PUT", "/_matrix/client/v3/sendToDevice/m.test/txn1", aliceTok, body)
	if n := len(inbox(bob, "DEVBOB")); n != 1 {
		t.Fatalf("retried txn delivered again: %d messages", n)
	}
	ts.mustDo(200, "PUT", "/_matrix/client/v3/sendToDevice/m.other/txn1", aliceTok, body)
	ts.mustDo(200, "PUT", "/_matrix/client/r0/sendToDevice/m.test/txn2", aliceTok, body)
	msgs = inbox(bob, "DEVBOB")
	if len(msgs) != 3 || msgs[1].Type != "m.other" || !(msgs[0].Pos < msgs[1].Pos && msgs[1].Pos < msgs[2].Pos) {
		t.Fatalf("inbox after new txns = %+v", msgs)
	}
	// Txn ids are scoped to the sending device: bob may use "txn1" too.
	ts.mustDo(200, "PUT", "/_matrix/client/v3/sendToDevice/m.test/txn1", bobTok, map[string]any{"messages": map[string]any{alice: map[string]any{"DEVALICE": map[string]any{}}}})
	if n := len(inbox(alice, "DEVALICE")); n != 1 {
		t.Fatalf("alice's inbox = %d messages, want 1", n)
	}

	// "*" reaches every device of the user, each message at its own position.
	if err := ts.db.Write(ctx, func(tx *storage.Tx) error {
		return tx.UpsertDevice(ctx, &storage.Device{UserID: bob, DeviceID: "BOBPHONE", CreatedTS: time.Now().UnixMilli()})
	}); err != nil {
		t.Fatal(err)
	}
	ts.mustDo(200, "PUT", "/_matrix/client/v3/sendToDevice/m.all/txn3", aliceTok, map[string]any{"messages": map[string]any{bob: map[string]any{"*": map[string]any{"hi": "all"}}}})
	phone := inbox(bob, "BOBPHONE")
	laptop := inbox(bob, "DEVBOB")
	if len(phone) != 1 || phone[0].Type != "m.all" || laptop[len(laptop)-1].Type != "m.all" || phone[0].Pos == laptop[len(laptop)-1].Pos {
		t.Fatalf("wildcard delivery: phone %+v laptop %+v", phone, laptop)
	}

	// Acknowledged messages are deleted.
	if err := ts.db.DeleteToDeviceUpTo(ctx, bob, "DEVBOB", msgs[1].Pos); err != nil {
		t.Fatal(err)
	}
	if left := inbox(bob, "DEVBOB"); len(left) != 2 || left[0].Pos != msgs[2].Pos {
		t.Fatalf("after ack: %+v", left)
	}
	// Limit and range bounds.
	if some, _ := ts.db.ToDeviceSince(ctx, bob, "DEVBOB", msgs[2].Pos, ts.rooms.Notifier().Latest(), 1); len(some) != 1 || some[0].Type != "m.all" {
		t.Fatalf("ToDeviceSince after pos = %+v", some)
	}

	// Errors.
	ts.wantErr(401, "M_MISSING_TOKEN", "PUT", "/_matrix/client/v3/sendToDevice/m.test/t", "", body)
	ts.wantErr(400, "M_NOT_JSON", "PUT", "/_matrix/client/v3/sendToDevice/m.test/t4", aliceTok, "{{")
	ts.wantErr(400, "M_BAD_JSON", "PUT", "/_matrix/client/v3/sendToDevice/m.test/t5", aliceTok, map[string]any{"messages": map[string]any{bob: map[string]any{"DEVBOB": "not an object"}}})
	ts.wantErr(400, "M_BAD_JSON", "PUT", "/_matrix/client/v3/sendToDevice/m.test/t6", aliceTok, map[string]any{"messages": []int{1}})
	ts.wantErr(400, "M_MISSING_PARAM", "PUT", "/_matrix/client/v3/sendToDevice/m.test/t7", aliceTok, map[string]any{})
	ts.wantErr(400, "M_INVALID_PARAM", "PUT", "/_matrix/client/v3/sendToDevice/m.test/t8", aliceTok, map[string]any{"messages": map[string]any{"bob": map[string]any{"D": map[string]any{}}}})
	ts.wantErr(405, "M_UNRECOGNIZED", "POST", "/_matrix/client/v3/sendToDevice/m.test/t9", aliceTok, body)
}
