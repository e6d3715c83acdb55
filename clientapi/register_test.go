package clientapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/config"
)

const testPassword = "correct horse battery staple"

// signUp registers through POST /register (UIA challenge, then the dummy
// stage) and returns the new account's id, token and device.
func (ts *testServer) signUp(username, password string) (userID, token, deviceID string) {
	ts.t.Helper()
	body := map[string]any{"username": username, "password": password}
	challenge := ts.mustDo(http.StatusUnauthorized, "POST", "/_matrix/client/v3/register", "", body)
	body["auth"] = map[string]any{"type": "m.login.dummy", "session": challenge["session"]}
	out := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/register", "", body)
	return out["user_id"].(string), out["access_token"].(string), out["device_id"].(string)
}

func TestRegisterUIAAndLogin(t *testing.T) {
	ts := newTestServer(t)
	const path = "/_matrix/client/v3/register"
	body := map[string]any{"username": "Alice", "password": testPassword, "initial_device_display_name": "Phone"}
	challenge := ts.mustDo(http.StatusUnauthorized, "POST", path, "", body)
	flows, _ := challenge["flows"].([]any)
	if len(flows) != 1 {
		t.Fatalf("flows: %v", challenge)
	}
	stages := flows[0].(map[string]any)["stages"].([]any)
	if len(stages) != 1 || stages[0] != "m.login.dummy" {
		t.Fatalf("stages: %v", stages)
	}
	if _, ok := challenge["params"].(map[string]any); !ok {
		t.Fatalf("params missing: %v", challenge)
	}
	session, _ := challenge["session"].(string)
	if session == "" {
		t.Fatalf("session missing: %v", challenge)
	}
	if _, ok := challenge["errcode"]; ok {
		t.Fatalf("first challenge must carry no errcode: %v", challenge)
	}

	body["auth"] = map[string]any{"type": "m.login.dummy", "session": session}
	out := ts.mustDo(http.StatusOK, "POST", path, "", body)
	if out["user_id"] != "@alice:localhost" || out["access_token"] == nil || out["device_id"] == nil || out["home_server"] != "localhost" {
		t.Fatalf("register response: %v", out)
	}
	if _, ok := out["refresh_token"]; ok {
		t.Fatalf("refresh token without asking: %v", out)
	}
	token := out["access_token"].(string)
	who := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/account/whoami", token, nil)
	if who["user_id"] != "@alice:localhost" || who["device_id"] != out["device_id"] || who["is_guest"] != false {
		t.Fatalf("whoami: %v", who)
	}
	// Default display name is the localpart; the device got its name.
	prof := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/profile/@alice:localhost", "", nil)
	if prof["displayname"] != "alice" {
		t.Fatalf("profile: %v", prof)
	}
	dev := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/devices/"+out["device_id"].(string), token, nil)
	if dev["display_name"] != "Phone" {
		t.Fatalf("device: %v", dev)
	}
	// The session is used up.
	ts.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", path, "", map[string]any{
		"username": "alice2", "password": testPassword, "auth": map[string]any{"type": "m.login.dummy", "session": session}})

	// Taken, also in another case; checked before UIA.
	ts.wantErr(http.StatusBadRequest, "M_USER_IN_USE", "POST", path, "", map[string]any{"username": "alice", "password": "x"})
	ts.wantErr(http.StatusBadRequest, "M_USER_IN_USE", "POST", path, "", map[string]any{"username": "ALICE", "password": "x"})

	// The password works at /login.
	login := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/login", "", map[string]any{
		"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": testPassword})
	if login["user_id"] != "@alice:localhost" {
		t.Fatalf("login: %v", login)
	}
}

func TestRegisterSecondStepOnlyAuth(t *testing.T) {
	ts := newTestServer(t)
	const path = "/_matrix/client/v3/register"
	challenge := ts.mustDo(http.StatusUnauthorized, "POST", path, "", map[string]any{"username": "bob", "password": testPassword})
	out := ts.mustDo(http.StatusOK, "POST", path, "", map[string]any{
		"auth": map[string]any{"type": "m.login.dummy", "session": challenge["session"]}})
	if out["user_id"] != "@bob:localhost" {
		t.Fatalf("register: %v", out)
	}
	ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/login", "", map[string]any{
		"type": "m.login.password", "user": "bob", "password": testPassword})
}

func TestRegisterErrors(t *testing.T) {
	ts := newTestServer(t)
	const path = "/_matrix/client/v3/register"
	for _, name := range []string{"bad name", "UPPER!", "_reserved", "12345", "caf\u00e9", strings.Repeat("a", 250)} {
		ts.wantErr(http.StatusBadRequest, "M_INVALID_USERNAME", "POST", path, "", map[string]any{"username": name, "password": "x"})
	}
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "POST", path, "", "{not json")
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", path, "", `{"username": 5}`)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", path+"?kind=robot", "", map[string]any{})
	// Password is required once UIA is done.
	ch := ts.mustDo(http.StatusUnauthorized, "POST", path, "", map[string]any{"username": "nopw"})
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", path, "", map[string]any{
		"username": "nopw", "auth": map[string]any{"type": "m.login.dummy", "session": ch["session"]}})
	// Unknown session and unknown stage.
	ts.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", path, "", map[string]any{
		"username": "x1", "password": "x", "auth": map[string]any{"type": "m.login.dummy", "session": "nope"}})
	ts.wantErr(http.StatusBadRequest, "M_UNRECOGNIZED", "POST", path, "", map[string]any{
		"username": "x1", "password": "x", "auth": map[string]any{"type": "m.login.recaptcha"}})
	// Appservice registration needs the appservice's token.
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "POST", path, "", map[string]any{
		"type": "m.login.application_service", "username": "bridge_x"})
	// A user token is not accepted on /register.
	_, tok := ts.createUser("carol")
	ts.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", path, tok, map[string]any{"username": "x2", "password": "x"})
}

func TestRegisterVariants(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.AdminUsers = []string{"boss"} })
	const path = "/_matrix/client/v3/register"
	register := func(body map[string]any) map[string]any {
		t.Helper()
		ch := ts.mustDo(http.StatusUnauthorized, "POST", path, "", body)
		body["auth"] = map[string]any{"type": "m.login.dummy", "session": ch["session"]}
		return ts.mustDo(http.StatusOK, "POST", path, "", body)
	}
	// inhibit_login: no device, no token.
	out := register(map[string]any{"username": "quiet", "password": testPassword, "inhibit_login": true})
	if out["user_id"] != "@quiet:localhost" || out["access_token"] != nil || out["device_id"] != nil {
		t.Fatalf("inhibit_login: %v", out)
	}
	// No username: a numeric one is generated.
	out = register(map[string]any{"password": testPassword})
	uid := out["user_id"].(string)
	if lp := strings.TrimSuffix(strings.TrimPrefix(uid, "@"), ":localhost"); strings.Trim(lp, "0123456789") != "" {
		t.Fatalf("generated user id %q", uid)
	}
	// refresh_token and a chosen device id.
	out = register(map[string]any{"username": "fresh", "password": testPassword, "refresh_token": true, "device_id": "MYDEVICE"})
	if out["refresh_token"] == nil || out["expires_in_ms"] == nil || out["device_id"] != "MYDEVICE" {
		t.Fatalf("refresh_token: %v", out)
	}
	// admin_users are admins.
	register(map[string]any{"username": "boss", "password": testPassword})
	u, err := ts.db.UserByID(context.Background(), "@boss:localhost")
	if err != nil || !u.IsAdmin {
		t.Fatalf("boss: %+v %v", u, err)
	}
	if u, _ := ts.db.UserByID(context.Background(), "@fresh:localhost"); u.IsAdmin {
		t.Fatal("fresh must not be an admin")
	}
}

func TestRegisterDisabledAndGuests(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.Registration.Enabled = false })
	const path = "/_matrix/client/v3/register"
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", path, "", map[string]any{"username": "x", "password": "x"})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", "/_matrix/client/v3/register/available?username=x", "", nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", path+"?kind=guest", "", map[string]any{})

	gs := newTestServer(t, func(c *config.Config) { c.Registration.Enabled = false; c.Registration.AllowGuests = true })
	out := gs.mustDo(http.StatusOK, "POST", path+"?kind=guest", "", map[string]any{"initial_device_display_name": "guest device"})
	uid, _ := out["user_id"].(string)
	lp := strings.TrimSuffix(strings.TrimPrefix(uid, "@"), ":localhost")
	if lp == "" || strings.Trim(lp, "0123456789") != "" || out["access_token"] == nil {
		t.Fatalf("guest: %v", out)
	}
	token := out["access_token"].(string)
	who := gs.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/account/whoami", token, nil)
	if who["is_guest"] != true {
		t.Fatalf("whoami: %v", who)
	}
	gs.wantErr(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "GET", "/_matrix/client/v3/account/3pid", token, nil)
}

func TestRegisterAvailable(t *testing.T) {
	ts := newTestServer(t)
	ts.createUser("taken")
	const path = "/_matrix/client/v3/register/available?username="
	out := ts.mustDo(http.StatusOK, "GET", path+"free", "", nil)
	if out["available"] != true {
		t.Fatalf("available: %v", out)
	}
	ts.wantErr(http.StatusBadRequest, "M_USER_IN_USE", "GET", path+"taken", "", nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_USERNAME", "GET", path+"no%20spaces", "", nil)
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "GET", path, "", nil)
}

// synapseMAC computes the shared-secret registration MAC as Synapse's
// register_new_matrix_user does.
func synapseMAC(secret, nonce, user, password string, admin bool) string {
	m := hmac.New(sha1.New, []byte(secret))
	adm := "notadmin"
	if admin {
		adm = "admin"
	}
	m.Write([]byte(nonce + "\x00" + user + "\x00" + password + "\x00" + adm))
	return hex.EncodeToString(m.Sum(nil))
}

func TestSharedSecretRegistration(t *testing.T) {
	const secret = "s3cret"
	const path = "/_synapse/admin/v1/register"
	ts := newTestServer(t, func(c *config.Config) { c.Registration.Enabled = false; c.Registration.SharedSecret = secret })

	nonce := ts.mustDo(http.StatusOK, "GET", path, "", nil)["nonce"].(string)
	out := ts.mustDo(http.StatusOK, "POST", path, "", map[string]any{
		"nonce": nonce, "username": "root", "password": testPassword, "admin": true, "displayname": "The Root",
		"mac": synapseMAC(secret, nonce, "root", testPassword, true)})
	if out["user_id"] != "@root:localhost" || out["access_token"] == nil || out["device_id"] == nil || out["home_server"] != "localhost" {
		t.Fatalf("shared-secret register: %v", out)
	}
	u, err := ts.db.UserByID(context.Background(), "@root:localhost")
	if err != nil || !u.IsAdmin || u.DisplayName == nil || *u.DisplayName != "The Root" {
		t.Fatalf("user: %+v %v", u, err)
	}
	// The nonce is single-use.
	ts.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", path, "", map[string]any{
		"nonce": nonce, "username": "root2", "password": testPassword, "admin": false,
		"mac": synapseMAC(secret, nonce, "root2", testPassword, false)})

	// A MAC over different details (admin flipped) is refused.
	nonce = ts.mustDo(http.StatusOK, "GET", path, "", nil)["nonce"].(string)
	e := ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", path, "", map[string]any{
		"nonce": nonce, "username": "sneaky", "password": testPassword, "admin": true,
		"mac": synapseMAC(secret, nonce, "sneaky", testPassword, false)})
	if e["error"] != "HMAC incorrect" {
		t.Fatalf("error: %v", e)
	}
	ts.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", path, "", map[string]any{
		"nonce": "made-up", "username": "x", "password": "x", "mac": "00"})
	// Taken user ids are refused even with a good MAC.
	nonce = ts.mustDo(http.StatusOK, "GET", path, "", nil)["nonce"].(string)
	ts.wantErr(http.StatusBadRequest, "M_USER_IN_USE", "POST", path, "", map[string]any{
		"nonce": nonce, "username": "root", "password": testPassword,
		"mac": synapseMAC(secret, nonce, "root", testPassword, false)})

	off := newTestServer(t)
	e = off.wantErr(http.StatusBadRequest, "M_UNKNOWN", "GET", path, "", nil)
	if e["error"] != "Shared secret registration is not enabled" {
		t.Fatalf("disabled: %v", e)
	}
	off.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", path, "", map[string]any{"nonce": "x"})
}

// TestAccountsWithMautrixClient drives the account endpoints with a real
// client library, the way bots and bridges do.
func TestAccountsWithMautrixClient(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	cli, err := mautrix.NewClient(ts.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	avail, err := cli.RegisterAvailable(ctx, "bot")
	if err != nil || !avail.Available {
		t.Fatalf("available: %+v %v", avail, err)
	}
	reg, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "bot", Password: testPassword, InitialDeviceDisplayName: "bot"})
	if err != nil || reg.UserID != "@bot:localhost" {
		t.Fatalf("register: %+v %v", reg, err)
	}
	if _, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "bot", Password: testPassword}); !errors.Is(err, mautrix.MUserInUse) {
		t.Fatalf("second register: %v", err)
	}
	login, err := cli.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword, Password: testPassword,
		Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "bot"}, StoreCredentials: true})
	if err != nil || login.DeviceID == "" {
		t.Fatalf("login: %+v %v", login, err)
	}
	if who, err := cli.Whoami(ctx); err != nil || who.UserID != reg.UserID || who.DeviceID != login.DeviceID {
		t.Fatalf("whoami: %+v %v", who, err)
	}
	if err := cli.SetDisplayName(ctx, "Robot"); err != nil {
		t.Fatal(err)
	}
	if p, err := cli.GetProfile(ctx, reg.UserID); err != nil || p.DisplayName != "Robot" {
		t.Fatalf("profile: %+v %v", p, err)
	}
	devs, err := cli.GetDevicesInfo(ctx)
	if err != nil || len(devs.Devices) != 2 {
		t.Fatalf("devices: %+v %v", devs, err)
	}
	// Delete the registration device: UIA with the password. (mautrix
	// returns no body with the 401, so the challenge is read directly.)
	err = cli.DeleteDevice(ctx, reg.DeviceID, &mautrix.ReqDeleteDevice[any]{})
	var httpErr mautrix.HTTPError
	if !errors.As(err, &httpErr) || httpErr.Response.StatusCode != http.StatusUnauthorized {
		t.Fatalf("delete without auth: %v", err)
	}
	ch := ts.wantUIAChallenge("DELETE", "/_matrix/client/v3/devices/"+string(reg.DeviceID), login.AccessToken, map[string]any{})
	session, _ := ch["session"].(string)
	err = cli.DeleteDevice(ctx, reg.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: mautrix.ReqUIAuthLogin{
		BaseAuthData: mautrix.BaseAuthData{Type: mautrix.AuthTypePassword, Session: session}, User: "bot", Password: testPassword}})
	if err != nil {
		t.Fatalf("delete device: %v", err)
	}
	if _, err := cli.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("whoami after logout: %v", err)
	}
}
