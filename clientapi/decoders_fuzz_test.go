package clientapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Fuzz targets for the pure decoders behind the handlers. Each checks
// properties beyond "no panic": errors are Matrix 4xx errors, accepted
// input round-trips, and the fast paths agree with a slow reference.

// respErr4xx fails unless err is nil or a mautrix.RespError with a 4xx status.
func respErr4xx(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var re mautrix.RespError
	if !errors.As(err, &re) {
		t.Fatalf("%s: error %v is not a Matrix error", what, err)
	}
	if re.StatusCode != 0 && (re.StatusCode < 400 || re.StatusCode > 499) {
		t.Fatalf("%s: status %d", what, re.StatusCode)
	}
	if !strings.HasPrefix(re.ErrCode, "M_") {
		t.Fatalf("%s: errcode %q", what, re.ErrCode)
	}
}

// referenceDepth is the nesting depth of valid JSON, by the standard library's tokenizer.
func referenceDepth(b []byte) int {
	dec := json.NewDecoder(bytes.NewReader(b))
	depth, maxDepth := 0, 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return maxDepth
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				depth++
				maxDepth = max(maxDepth, depth)
			default:
				depth--
			}
		}
	}
}

// FuzzDecodeJSON: the request-body decoders used by every endpoint.
// M_NOT_JSON exactly for invalid JSON, the depth check agrees with the
// standard library on valid JSON, and nothing but Matrix 4xx errors.
func FuzzDecodeJSON(f *testing.F) {
	f.Add([]byte(`{"a":[1,2,{"b":"\"]]]"}]}`))
	f.Add([]byte(strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth)))
	f.Add([]byte(strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1)))
	f.Add([]byte(`{"s":"\\\\\"[[[["}`))
	f.Add([]byte("\ufeff{}"))
	f.Fuzz(func(t *testing.T, body []byte) {
		if json.Valid(body) && referenceDepth(body) <= 10000 {
			want := referenceDepth(body) > maxJSONDepth
			if got := jsonDepthExceeds(body, maxJSONDepth); got != want {
				t.Fatalf("jsonDepthExceeds = %v, reference depth %d", got, referenceDepth(body))
			}
		}
		var m map[string]any
		err := decodeJSONBytes(body, &m)
		respErr4xx(t, "decodeJSONBytes", err)
		var re mautrix.RespError
		trimmed := bytes.TrimSpace(body)
		if len(trimmed) > 0 && !json.Valid(body) && !jsonDepthExceeds(body, maxJSONDepth) {
			if !errors.As(err, &re) || re.ErrCode != "M_NOT_JSON" {
				t.Fatalf("invalid JSON %q: got %v, want M_NOT_JSON", body, err)
			}
		}
		var body2 struct {
			Name   string   `json:"name"`
			Invite []string `json:"invite"`
			N      int      `json:"n"`
		}
		respErr4xx(t, "decodeJSONBytes(struct)", decodeJSONBytes(body, &body2))

		r := newBodyRequest(body)
		raw, err := readJSONObject(r)
		respErr4xx(t, "readJSONObject", err)
		if err == nil {
			var obj map[string]json.RawMessage
			if json.Unmarshal(raw, &obj) != nil {
				t.Fatalf("readJSONObject accepted %q, which is not a JSON object", body)
			}
		}
	})
}

// FuzzRoomEventFilter: inline RoomEventFilter JSON (query parameter of
// /messages and /context, body part of /search) and the matching it drives.
func FuzzRoomEventFilter(f *testing.F) {
	f.Add(`{"types":["m.*","*.message"],"not_senders":["@a:b"],"limit":10}`, "m.room.message", "@a:b")
	f.Add(`{"types":[]}`, "", "")
	f.Add(`{"limit":-5}`, "x", "y")
	f.Add(`{"contains_url":"yes"}`, "x", "y")
	f.Add(`[1,2]`, "x", "y")
	f.Add(`{"types":["***"],"not_types":["a*b*c"]}`, "aXbYc", "")
	f.Fuzz(func(t *testing.T, raw, evType, sender string) {
		fp, err := parseRoomEventFilter(raw)
		respErr4xx(t, "parseRoomEventFilter", err)
		if err != nil {
			return
		}
		if fp.Limit < 0 {
			t.Fatalf("accepted negative limit %d", fp.Limit)
		}
		_ = storageEventFilter(fp)
		_ = filterMatches(fp, evType, sender)
		_ = filterAllowsRoom(fp, sender)
		for _, tt := range fp.Types {
			checkGlob(t, tt.Type, evType)
		}
	})
}

// FuzzGlobMatch compares the filter glob matcher with a regexp reference.
func FuzzGlobMatch(f *testing.F) {
	f.Add("m.*", "m.room.message")
	f.Add("*a*a*", "aa")
	f.Add("a**b", "ab")
	f.Add("*", "")
	f.Add("ab*ba", "aba")
	f.Fuzz(func(t *testing.T, pattern, s string) {
		checkGlob(t, pattern, s)
	})
}

func checkGlob(t *testing.T, pattern, s string) {
	t.Helper()
	parts := strings.Split(pattern, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	re, err := regexp.Compile(`(?s)\A` + strings.Join(parts, ".*") + `\z`)
	if err != nil {
		return // patterns of invalid UTF-8 cannot be compiled; skip the comparison
	}
	if got, want := globMatch(pattern, s), re.MatchString(s); got != want {
		t.Fatalf("globMatch(%q, %q) = %v, regexp says %v", pattern, s, got, want)
	}
}

// FuzzValidateFilter: POST /user/{userId}/filter bodies. A filter the
// validator accepts is stored and later used by /sync, so it must also
// decode into the filter type /sync uses.
func FuzzValidateFilter(f *testing.F) {
	f.Add([]byte(`{"room":{"timeline":{"limit":10,"types":["m.room.message"]},"include_leave":true},"presence":{"not_types":["*"]},"event_format":"client","event_fields":["content.body"]}`))
	f.Add([]byte(`{"room":{"state":{"lazy_load_members":"yes"}}}`))
	f.Add([]byte(`{"room":{"timeline":{"limit":1.5}}}`))
	f.Add([]byte(`{"room":{"timeline":{"limit":9007199254740993}}}`))
	f.Add([]byte(`{"account_data":null,"room":null}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		raw, err := readJSONObject(newBodyRequest(body))
		if err != nil {
			respErr4xx(t, "readJSONObject", err)
			return
		}
		err = validateFilter(raw)
		respErr4xx(t, "validateFilter", err)
		if err != nil {
			return
		}
		var filter mautrix.Filter
		if err := json.Unmarshal(raw, &filter); err != nil {
			t.Fatalf("validateFilter accepted %s, but /sync cannot decode it: %v", raw, err)
		}
		_ = mergeFilterDefaults(filter)
	})
}

// FuzzSyncToken: /sync since tokens and the stream tokens of pagination.
// Whatever parses renders back to a token that parses to the same value.
func FuzzSyncToken(f *testing.F) {
	for _, s := range []string{"s0", "s12_7", "s12_13", "t5-9", "s-1", "s9223372036854775807", "s1_", "s_1", "", "t-", "s+1", "s٣"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := parseSyncToken(s)
		if err != nil {
			return
		}
		if tok.Pos < 0 || tok.ToDevice < 0 || tok.ToDevice > tok.Pos {
			t.Fatalf("parseSyncToken(%q) = %+v", s, tok)
		}
		again, err := parseSyncToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("parseSyncToken(%q) = %+v renders %q, which parses to %+v, %v", s, tok, tok.String(), again, err)
		}
	})
}

// FuzzIdentifiers: the syntax checks of user ids, room ids, aliases and
// alias localparts that guard the path parameters.
func FuzzIdentifiers(f *testing.F) {
	for _, s := range []string{"@alice:localhost", "@:x", "!room:localhost", "!opaque", "#alias:localhost:8448",
		"#a:b/c", "#\u00e9:x", "@alice:[::1]:8448", "#:", "!\x00:x", "@ALICE:localhost", "#a b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if validRoomID(s) && (len(s) > 255 || s[0] != '!') {
			t.Fatalf("validRoomID accepted %q", s)
		}
		if validUserID(s) {
			if _, _, err := id.UserID(s).Parse(); err != nil {
				t.Fatalf("validUserID accepted %q, which does not parse: %v", s, err)
			}
		}
		if lp, server, ok := splitAlias(s); ok {
			if "#"+lp+":"+server != s {
				t.Fatalf("splitAlias(%q) = %q, %q", s, lp, server)
			}
			if !validAliasLocalpart(lp) || strings.ContainsRune(lp, ':') {
				t.Fatalf("splitAlias(%q) accepted localpart %q", s, lp)
			}
		}
	})
}

// newBodyRequest is a request carrying body, for the decoders.
func newBodyRequest(body []byte) *http.Request {
	return httptest.NewRequest("POST", "/", bytes.NewReader(body))
}
