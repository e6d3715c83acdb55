package rooms

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// build.go builds the common kind of event, a message-like (non-state)
// event, in one pass: gomatrixserverlib's EventBuilder.Build encodes,
// decodes and re-canonicalises the event about six times on its way to
// hashing and signing it, which made it the largest cost of a send.
//
// The result is byte for byte the event EventBuilder.Build produces (and so
// has the same event id, content hash and signature): TestFastBuildMatches
// compares the two for every room version. Everything around it stays with
// gomatrixserverlib: auth event selection, canonical JSON of the content,
// the PDU type, field checks and the auth rules. Events whose redaction
// keeps part of their content (membership, create, power levels, join
// rules, history visibility, aliases, redactions) and state events take
// EventBuilder.Build.

// fastBuildVersion says how the one-pass builder handles a room version.
type fastBuildVersion struct {
	ok bool
	// keepsOrigin: the version's redaction algorithm keeps the top-level
	// "origin" key (room versions before 11).
	keepsOrigin bool
	// eventIDEncoding encodes the reference hash into the event id.
	eventIDEncoding *base64.Encoding
}

var (
	fastBuildOnce     sync.Once
	fastBuildVersions map[gomatrixserverlib.RoomVersion]fastBuildVersion
)

// fastBuildFor returns how to build events of room version v in one pass.
// A version qualifies when its event format carries event ids as hashes
// and gomatrixserverlib's redaction of a probe event has exactly the shape
// the builder assumes (see probeRedaction).
func fastBuildFor(v gomatrixserverlib.IRoomVersion) fastBuildVersion {
	fastBuildOnce.Do(func() {
		fastBuildVersions = make(map[gomatrixserverlib.RoomVersion]fastBuildVersion)
		for id, impl := range gomatrixserverlib.RoomVersions() {
			fastBuildVersions[id] = probeVersion(impl)
		}
	})
	return fastBuildVersions[v.Version()]
}

func probeVersion(v gomatrixserverlib.IRoomVersion) fastBuildVersion {
	if v.EventFormat() != gomatrixserverlib.EventFormatV2 {
		return fastBuildVersion{}
	}
	var enc *base64.Encoding
	switch v.EventIDFormat() {
	case gomatrixserverlib.EventIDFormatV2:
		enc = base64.RawStdEncoding
	case gomatrixserverlib.EventIDFormatV3:
		enc = base64.RawURLEncoding
	default:
		return fastBuildVersion{}
	}
	for _, keepsOrigin := range []bool{true, false} {
		if probeRedaction(v, keepsOrigin) {
			return fastBuildVersion{ok: true, keepsOrigin: keepsOrigin, eventIDEncoding: enc}
		}
	}
	return fastBuildVersion{}
}

// probeRedaction checks that gomatrixserverlib redacts a message event of
// version v into what redactedForm builds (content emptied, origin kept or
// not, every other key kept).
func probeRedaction(v gomatrixserverlib.IRoomVersion, keepsOrigin bool) bool {
	f := eventFields{
		authEvents: []string{"$a"}, content: []byte(`{"body":"x","msgtype":"m.text"}`), depth: 7,
		origin: "example.org", originTS: 1234, prevEvents: []string{"$p"},
		roomID: "!r:example.org", sender: "@s:example.org", eventType: "m.room.message",
	}
	full := f.appendJSON(nil, `"hashes":{"sha256":"h"},`, nil, true, true)
	redacted, err := v.RedactEventJSON(full)
	if err != nil {
		return false
	}
	canonical, err := gomatrixserverlib.CanonicalJSON(redacted)
	if err != nil {
		return false
	}
	return string(canonical) == string(f.appendJSON(nil, `"hashes":{"sha256":"h"},`, nil, false, keepsOrigin))
}

// fastBuildable reports whether buildFast can build req in a room of version v.
func fastBuildable(v gomatrixserverlib.IRoomVersion, req EventRequest) bool {
	if req.StateKey != nil || !fastBuildFor(v).ok {
		return false
	}
	// The redaction algorithms keep content only for some m.room.* types;
	// of those namespaced types only the plain message ones come here.
	if strings.HasPrefix(req.Type, "m.room.") {
		return req.Type == "m.room.message" || req.Type == "m.room.encrypted"
	}
	return true
}

// eventFields are the keys of a message event, each already valid JSON
// input: content is canonical JSON, strings are raw Go strings.
type eventFields struct {
	authEvents []string
	content    []byte
	depth      int64
	origin     string
	originTS   int64
	prevEvents []string
	roomID     string
	sender     string
	eventType  string
}

// appendJSON appends the event as canonical JSON (keys sorted, no spaces)
// with hashes and signatures (`"hashes":{...},` and `"signatures":{...},`
// fragments, empty for none). withContent false writes the redacted form's
// empty content; withOrigin false leaves out the origin key.
func (f *eventFields) appendJSON(b []byte, hashes string, signatures []byte, withContent, withOrigin bool) []byte {
	b = append(b, `{"auth_events":`...)
	b = appendCanonicalStrings(b, f.authEvents)
	b = append(b, `,"content":`...)
	if withContent {
		b = append(b, f.content...)
	} else {
		b = append(b, `{}`...)
	}
	b = append(b, `,"depth":`...)
	b = strconv.AppendInt(b, f.depth, 10)
	b = append(b, ',')
	b = append(b, hashes...)
	if withOrigin {
		b = append(b, `"origin":`...)
		b = appendCanonicalString(b, f.origin)
		b = append(b, ',')
	}
	b = append(b, `"origin_server_ts":`...)
	b = strconv.AppendInt(b, f.originTS, 10)
	b = append(b, `,"prev_events":`...)
	b = appendCanonicalStrings(b, f.prevEvents)
	b = append(b, `,"room_id":`...)
	b = appendCanonicalString(b, f.roomID)
	b = append(b, `,"sender":`...)
	b = appendCanonicalString(b, f.sender)
	b = append(b, ',')
	b = append(b, signatures...)
	b = append(b, `"type":`...)
	b = appendCanonicalString(b, f.eventType)
	return append(b, '}')
}

// appendCanonicalString appends s as a canonical JSON string: what
// gomatrixserverlib's canonical JSON makes of json.Marshal(s).
func appendCanonicalString(b []byte, s string) []byte {
	plain := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			plain = false
			break
		}
	}
	if plain {
		b = append(b, '"')
		b = append(b, s...)
		return append(b, '"')
	}
	quoted, _ := json.Marshal(s) // a string always encodes
	return gomatrixserverlib.CompactJSON(quoted, b)
}

func appendCanonicalStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendCanonicalString(b, s)
	}
	return append(b, ']')
}

// buildFast builds the event eb describes (its auth events already added)
// exactly as eb.Build(now, origin, key) would, in one pass.
func buildFast(eb *gomatrixserverlib.EventBuilder, v gomatrixserverlib.IRoomVersion, now time.Time, origin spec.ServerName, key *SigningKey) (gomatrixserverlib.PDU, error) {
	fv := fastBuildFor(v)
	content, err := gomatrixserverlib.EnforcedCanonicalJSON(eb.Content, v.Version())
	if err != nil {
		return nil, err
	}
	f := eventFields{
		authEvents: stringList(eb.AuthEvents), content: content, depth: eb.Depth,
		origin: string(origin), originTS: int64(spec.AsTimestamp(now)), prevEvents: stringList(eb.PrevEvents),
		roomID: eb.RoomID, sender: eb.SenderID, eventType: eb.Type,
	}
	buf := make([]byte, 0, 2*len(content)+512)

	// Content hash: the event without hashes, signatures and unsigned.
	buf = f.appendJSON(buf, "", nil, true, true)
	contentHash := sha256.Sum256(buf)
	hashes := `"hashes":{"sha256":"` + base64.RawStdEncoding.EncodeToString(contentHash[:]) + `"},`

	// The redacted event without signatures is both what is signed and
	// what the event id (the reference hash) is computed over.
	buf = f.appendJSON(buf[:0], hashes, nil, false, fv.keepsOrigin)
	signature := ed25519.Sign(key.PrivateKey, buf)
	reference := sha256.Sum256(buf)
	eventID := "$" + fv.eventIDEncoding.EncodeToString(reference[:])

	sigs := append(make([]byte, 0, 200), `"signatures":{`...)
	sigs = appendCanonicalString(sigs, string(origin))
	sigs = append(sigs, `:{`...)
	sigs = appendCanonicalString(sigs, string(key.ID))
	sigs = append(sigs, ':', '"')
	sigs = base64.RawStdEncoding.AppendEncode(sigs, signature)
	sigs = append(sigs, `"}},`...)
	full := f.appendJSON(make([]byte, 0, len(content)+len(buf)+len(sigs)), hashes, sigs, true, true)

	pdu, err := v.NewEventFromTrustedJSONWithEventID(eventID, full, false)
	if err != nil {
		return nil, err
	}
	if err := gomatrixserverlib.CheckFields(pdu); err != nil {
		return nil, err
	}
	return pdu, nil
}

// stringList returns the event ids of an EventBuilder's prev_events or
// auth_events (a []string in the event formats buildFast handles).
func stringList(v any) []string {
	if ss, ok := v.([]string); ok {
		return ss
	}
	return []string{}
}
