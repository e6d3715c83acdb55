package appservice

import (
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// fuzzSecondReg is a valid registration every fuzzed one is registered
// next to; its exclusive user namespace is @second_.*.
const fuzzSecondReg = `id: second
url: http://127.0.0.1:29334
as_token: as_second
hs_token: hs_second
sender_localpart: secondbot
namespaces:
  users:
    - regex: '@second_.*:localhost'
      exclusive: true
`

// FuzzParse: appservice registration files (YAML, written by hand or by
// other tools). Parse must never panic or hang; a registration it accepts
// has an id, two distinct tokens and a valid sender, an http(s) URL or
// none, and namespace regexes that compile. NewRegistry must never panic
// either: it refuses the same registration twice, and when it accepts the
// fuzzed registration next to a second one, both are found by id and
// token and the fuzzed one claims none of the second's exclusive users.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validReg))
	f.Add([]byte(fuzzSecondReg))
	f.Add([]byte("id: x\nas_token: a\nhs_token: h\nsender_localpart: bot\nurl: null\n"))
	f.Add([]byte("id: x\nas_token: a\nhs_token: a\nsender_localpart: bot\n"))
	f.Add([]byte("id: x\nas_token: a\nhs_token: h\nsender_localpart: Bot!\n"))
	f.Add([]byte("id: x\nas_token: a\nhs_token: h\nsender_localpart: bot\nnamespaces:\n  users:\n    - regex: '@second_a.*'\n      exclusive: false\n"))
	f.Add([]byte("id: x\nas_token: a\nhs_token: h\nsender_localpart: bot\nnamespaces:\n  rooms:\n    - regex: '(('\n"))
	f.Add([]byte("id: x\nas_token: a\nhs_token: h\nsender_localpart: bot\nurl: 'ftp://x'\n"))
	f.Add([]byte("a: &a [*a, *a, *a]\nb: &b [*a, *a, *a]\n"))
	f.Add([]byte("id: [1, 2]\n"))
	f.Add([]byte{})
	second, err := Parse("second.yaml", []byte(fuzzSecondReg))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		start := time.Now()
		r, err := Parse("fuzz.yaml", data)
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("Parse took %s", d)
		}
		if err != nil {
			if r != nil {
				t.Fatalf("Parse returned a registration and an error: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "appservice registration fuzz.yaml: ") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if r.ID == "" || r.AppToken == "" || r.ServerToken == "" || r.SenderLocalpart == "" {
			t.Fatalf("accepted a registration without id, tokens or sender: %+v", r.Registration)
		}
		if r.AppToken == r.ServerToken {
			t.Fatal("accepted as_token == hs_token")
		}
		if !localpartPattern.MatchString(r.SenderLocalpart) {
			t.Fatalf("accepted sender_localpart %q", r.SenderLocalpart)
		}
		if r.URL != "" {
			if u, err := url.Parse(r.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				t.Fatalf("accepted url %q", r.URL)
			}
		}
		for _, nss := range [][]namespace{r.users, r.aliases, r.rooms} {
			for _, ns := range nss {
				if ns.source == "" || ns.re == nil {
					t.Fatalf("accepted an empty namespace regex")
				}
				if _, err := regexp.Compile(ns.source); err != nil {
					t.Fatalf("accepted namespace regex %q: %v", ns.source, err)
				}
			}
		}
		if got := len(r.users) + len(r.aliases) + len(r.rooms); got != len(r.Namespaces.UserIDs)+len(r.Namespaces.RoomAliases)+len(r.Namespaces.RoomIDs) {
			t.Fatalf("compiled %d namespaces of %d", got, len(r.Namespaces.UserIDs)+len(r.Namespaces.RoomAliases)+len(r.Namespaces.RoomIDs))
		}
		for _, probe := range []string{"@second_:localhost", "@x:localhost", r.SenderID("localhost")} {
			if r.OwnsUser(probe) && !r.IsInterestedInUser(probe) {
				t.Fatalf("owns %s without being interested in it", probe)
			}
		}

		if _, err := NewRegistry([]*Registration{r, r}); err == nil {
			t.Fatal("NewRegistry accepted the same registration twice")
		}
		start = time.Now()
		reg, err := NewRegistry([]*Registration{r, second})
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("NewRegistry took %s", d)
		}
		if err != nil {
			return
		}
		if reg.ByID(r.ID) != r || reg.ByToken(r.AppToken) != r || reg.ByID("second") != second || reg.ByToken("as_second") != second {
			t.Fatal("an accepted registration is not found by id and as_token")
		}
		if len(reg.List()) != 2 {
			t.Fatalf("registry lists %d registrations", len(reg.List()))
		}
		for _, probe := range []string{"@second_:localhost", "@second_a:localhost"} {
			if r.IsInterestedInUser(probe) {
				t.Fatalf("NewRegistry accepted %v, which claims %s in second's exclusive namespace", r.Namespaces.UserIDs, probe)
			}
		}
	})
}
