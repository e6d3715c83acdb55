//go:build goolm

// This test drives the key endpoints with mautrix-go's real E2EE
// implementation (pure-Go olm): go test -tags goolm ./clientapi/ -run MautrixCrypto

package clientapi

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/agentspace/agentspace/storage"
)

// noRoomsStateStore: these tests use no encrypted rooms.
type noRoomsStateStore struct{}

func (noRoomsStateStore) IsEncrypted(context.Context, id.RoomID) (bool, error) { return false, nil }
func (noRoomsStateStore) GetEncryptionEvent(context.Context, id.RoomID) (*event.EncryptionEventContent, error) {
	return nil, nil
}
func (noRoomsStateStore) FindSharedRooms(context.Context, id.UserID) ([]id.RoomID, error) {
	return nil, nil
}

func keysOlmMachine(t *testing.T, ts *testServer, userID, token, deviceID string) *crypto.OlmMachine {
	t.Helper()
	ctx := context.Background()
	cli, err := mautrix.NewClient(ts.URL, id.UserID(userID), token)
	if err != nil {
		t.Fatal(err)
	}
	cli.DeviceID = id.DeviceID(deviceID)
	mach := crypto.NewOlmMachine(cli, nil, crypto.NewMemoryStore(nil), noRoomsStateStore{})
	if err := mach.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := mach.ShareKeys(ctx, -1); err != nil {
		t.Fatalf("%s ShareKeys: %v", userID, err)
	}
	return mach
}

func TestMautrixCryptoOlmAndCrossSigning(t *testing.T) {
	ts := newTestServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	ctx := context.Background()
	aliceMach := keysOlmMachine(t, ts, alice, aliceTok, "DEVALICE")
	bobMach := keysOlmMachine(t, ts, bob, bobTok, "DEVBOB")

	// Olm: alice fetches bob's device (checking its self-signature), claims
	// a one-time key (checking its signature), and sends an encrypted
	// to-device message that bob's machine decrypts.
	bobDev, err := aliceMach.GetOrFetchDevice(ctx, id.UserID(bob), "DEVBOB")
	if err != nil || bobDev == nil {
		t.Fatalf("fetching bob's device: %v", err)
	}
	secretType := event.Type{Type: "com.example.secret", Class: event.ToDeviceEventType}
	if err := aliceMach.SendEncryptedToDevice(ctx, bobDev, secretType, event.Content{Raw: map[string]any{"secret": "s3cret"}}); err != nil {
		t.Fatalf("SendEncryptedToDevice: %v", err)
	}
	msgs, err := ts.db.ToDeviceSince(ctx, bob, "DEVBOB", 0, ts.rooms.Notifier().Latest(), 10)
	if err != nil || len(msgs) != 1 || msgs[0].Type != "m.room.encrypted" {
		t.Fatalf("bob's inbox: %+v %v", msgs, err)
	}
	evt := &event.Event{Sender: id.UserID(alice), Type: event.ToDeviceEncrypted, Content: event.Content{VeryRaw: msgs[0].Content}}
	if err := evt.Content.ParseRaw(evt.Type); err != nil {
		t.Fatal(err)
	}
	dec := bobMach.HandleEncryptedEvent(ctx, evt)
	if dec == nil || dec.Content.Raw["secret"] != "s3cret" {
		t.Fatalf("bob could not decrypt alice's message: %+v", dec)
	}

	// Cross-signing: both publish keys; alice signs her device and master
	// key; bob signs alice's master key. Bob then trusts alice's device.
	for _, m := range []*crypto.OlmMachine{aliceMach, bobMach} {
		keys, err := m.GenerateCrossSigningKeys()
		if err != nil {
			t.Fatal(err)
		}
		if err := m.PublishCrossSigningKeys(ctx, keys, nil); err != nil {
			t.Fatalf("PublishCrossSigningKeys: %v", err)
		}
	}
	if err := aliceMach.SignOwnMasterKey(ctx); err != nil {
		t.Fatalf("SignOwnMasterKey: %v", err)
	}
	if err := aliceMach.SignOwnDevice(ctx, aliceMach.OwnIdentity()); err != nil {
		t.Fatalf("SignOwnDevice: %v", err)
	}
	alicePub, err := aliceMach.GetOwnCrossSigningPublicKeys(ctx)
	if err != nil || alicePub == nil {
		t.Fatalf("alice's own cross-signing keys: %v", err)
	}
	if err := bobMach.SignUser(ctx, id.UserID(alice), alicePub.MasterKey); err != nil {
		t.Fatalf("SignUser: %v", err)
	}
	// A second device of bob, holding his cross-signing keys but nothing
	// else, learns every signature from /keys/query alone.
	phoneTok := storage.NewToken("syt_")
	if err := ts.db.Write(ctx, func(tx *storage.Tx) error {
		now := time.Now().UnixMilli()
		if err := tx.UpsertDevice(ctx, &storage.Device{UserID: bob, DeviceID: "BOBPHONE", CreatedTS: now}); err != nil {
			return err
		}
		return tx.InsertAccessToken(ctx, &storage.AccessToken{TokenHash: storage.HashToken(phoneTok), UserID: bob, DeviceID: "BOBPHONE", CreatedTS: now})
	}); err != nil {
		t.Fatal(err)
	}
	bobPhone := keysOlmMachine(t, ts, bob, phoneTok, "BOBPHONE")
	if err := bobPhone.ImportCrossSigningKeys(bobMach.ExportCrossSigningKeys()); err != nil {
		t.Fatal(err)
	}
	if _, err := bobPhone.FetchKeys(ctx, []id.UserID{id.UserID(alice), id.UserID(bob)}, true); err != nil {
		t.Fatalf("FetchKeys: %v", err)
	}
	aliceDev, err := bobPhone.GetOrFetchDevice(ctx, id.UserID(alice), "DEVALICE")
	if err != nil {
		t.Fatal(err)
	}
	trust, err := bobPhone.ResolveTrustContext(ctx, aliceDev)
	if err != nil || trust != id.TrustStateCrossSignedVerified {
		t.Fatalf("bob's trust in alice's device = %v, %v; want cross-signed verified", trust, err)
	}
}
