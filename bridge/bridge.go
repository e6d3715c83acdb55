// Package bridge holds what the bridges to the world outside Matrix share:
// the outbound webhooks and hooks (package bridge/webhook) and the simple
// agent gateway, REST and WebSocket (package bridge/gateway). Both map onto
// the same Matrix rooms through package rooms, under the same rules.
package bridge

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// SignatureHeader carries the HMAC-SHA256 of a request body, GitHub-style:
// "sha256=<lower-case hex>".
const SignatureHeader = "X-AgentSpace-Signature"

// Sign returns the SignatureHeader value for body under secret.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// VerifySignature reports whether header is body's signature under secret
// (in constant time).
func VerifySignature(secret string, body []byte, header string) bool {
	return hmac.Equal([]byte(header), []byte(Sign(secret, body)))
}

// Message is the text of an m.room.message event.
type Message struct {
	Body    string
	MsgType string
}

// MessageOf extracts the text of a room message; ok is false for other
// events and for messages without a body (e.g. redacted ones).
func MessageOf(e *storage.Event) (m Message, ok bool) {
	if e.Type != "m.room.message" || e.StateKey != nil {
		return m, false
	}
	c := gjson.GetBytes(e.PDUJSON, "content")
	body := c.Get("body")
	if body.Type != gjson.String {
		return m, false
	}
	return Message{Body: body.Str, MsgType: c.Get("msgtype").Str}, true
}

// DisplayName is userID's display name in a room (its current member
// event), or its localpart when it has none.
func DisplayName(ctx context.Context, rs *rooms.Service, roomID, userID string) string {
	if ev, err := rs.CurrentStateEvent(ctx, roomID, spec.MRoomMember, userID); err == nil && ev != nil {
		if n := gjson.GetBytes(ev.Content(), "displayname"); n.Type == gjson.String && strings.TrimSpace(n.Str) != "" {
			return n.Str
		}
	}
	return Localpart(userID)
}

// Localpart is the part of a user id between "@" and ":".
func Localpart(userID string) string {
	lp, _, _ := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	return lp
}
