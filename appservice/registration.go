// Package appservice implements the Matrix application-service API on the
// homeserver side: registration files and their namespaces, and durable,
// ordered delivery of events to each appservice in transactions.
package appservice

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
	mautrixas "maunium.net/go/mautrix/appservice"
)

// Registration is one loaded appservice registration with its namespaces
// compiled.
type Registration struct {
	mautrixas.Registration
	// Path is the file it was loaded from (for error messages).
	Path string

	users, aliases, rooms []namespace
}

type namespace struct {
	re        *regexp.Regexp
	source    string
	exclusive bool
}

// RateLimited reports whether the appservice's requests are rate limited
// (the spec's default is true).
func (r *Registration) RateLimited() bool {
	return r.Registration.RateLimited == nil || *r.Registration.RateLimited
}

// ReceivesEphemeral reports whether typing, receipts, presence and
// to-device messages are pushed (MSC2409, stable and unstable field names).
func (r *Registration) ReceivesEphemeral() bool {
	return r.EphemeralEvents || r.SoruEphemeralEvents
}

// SenderID is the appservice's own user (sender_localpart) on serverName.
func (r *Registration) SenderID(serverName string) string {
	return "@" + r.SenderLocalpart + ":" + serverName
}

// IsInterestedInUser reports whether userID is in one of the user namespaces.
func (r *Registration) IsInterestedInUser(userID string) bool {
	return matchAny(r.users, userID, false)
}

// OwnsUser reports whether userID is in an exclusive user namespace.
func (r *Registration) OwnsUser(userID string) bool { return matchAny(r.users, userID, true) }

// IsInterestedInAlias reports whether alias is in one of the alias namespaces.
func (r *Registration) IsInterestedInAlias(alias string) bool {
	return matchAny(r.aliases, alias, false)
}

// OwnsAlias reports whether alias is in an exclusive alias namespace.
func (r *Registration) OwnsAlias(alias string) bool { return matchAny(r.aliases, alias, true) }

// IsInterestedInRoomID reports whether roomID is in one of the room namespaces.
func (r *Registration) IsInterestedInRoomID(roomID string) bool {
	return matchAny(r.rooms, roomID, false)
}

// HasAliasNamespaces reports whether any alias namespace exists (only then
// do room aliases need looking up to decide interest).
func (r *Registration) HasAliasNamespaces() bool { return len(r.aliases) > 0 }

func matchAny(nss []namespace, s string, exclusiveOnly bool) bool {
	for _, ns := range nss {
		if (!exclusiveOnly || ns.exclusive) && ns.re.MatchString(s) {
			return true
		}
	}
	return false
}

// LoadFile reads and checks one registration file.
func LoadFile(path string) (*Registration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("appservice registration %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse decodes a registration in the standard YAML format and checks
// every field; errors name the file and the field.
func Parse(path string, data []byte) (*Registration, error) {
	var raw mautrixas.Registration
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("appservice registration %s: invalid YAML: %w", path, err)
	}
	reg := &Registration{Registration: raw, Path: path}
	fail := func(field, format string, args ...any) error {
		return fmt.Errorf("appservice registration %s: %s: %s", path, field, fmt.Sprintf(format, args...))
	}
	if reg.ID == "" {
		return nil, fail("id", "is required")
	}
	if reg.AppToken == "" {
		return nil, fail("as_token", "is required")
	}
	if reg.ServerToken == "" {
		return nil, fail("hs_token", "is required")
	}
	if reg.AppToken == reg.ServerToken {
		return nil, fail("hs_token", "must differ from as_token")
	}
	if reg.SenderLocalpart == "" {
		return nil, fail("sender_localpart", "is required")
	}
	if !localpartPattern.MatchString(reg.SenderLocalpart) {
		return nil, fail("sender_localpart", "%q is not a valid user id localpart", reg.SenderLocalpart)
	}
	if reg.URL != "" {
		u, err := url.Parse(reg.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fail("url", "%q is not an http(s) URL (use null for an appservice that receives no transactions)", reg.URL)
		}
	}
	var err error
	if reg.users, err = compileNamespaces(reg.Namespaces.UserIDs); err != nil {
		return nil, fail("namespaces.users", "%v", err)
	}
	if reg.aliases, err = compileNamespaces(reg.Namespaces.RoomAliases); err != nil {
		return nil, fail("namespaces.aliases", "%v", err)
	}
	if reg.rooms, err = compileNamespaces(reg.Namespaces.RoomIDs); err != nil {
		return nil, fail("namespaces.rooms", "%v", err)
	}
	return reg, nil
}

var localpartPattern = regexp.MustCompile(`^[a-z0-9._=\-/+]+$`)

// compileNamespaces compiles namespace regexes. As in Synapse, a regex must
// match at the start of the id (Python's re.match); registrations usually
// anchor both ends themselves.
func compileNamespaces(list mautrixas.NamespaceList) ([]namespace, error) {
	out := make([]namespace, 0, len(list))
	for i, ns := range list {
		if ns.Regex == "" {
			return nil, fmt.Errorf("[%d].regex is required", i)
		}
		re, err := regexp.Compile(`^(?:` + ns.Regex + `)`)
		if err != nil {
			return nil, fmt.Errorf("[%d].regex %q is not a valid regular expression: %w", i, ns.Regex, err)
		}
		out = append(out, namespace{re: re, source: ns.Regex, exclusive: ns.Exclusive})
	}
	return out, nil
}

// Registry holds every loaded registration.
type Registry struct {
	list    []*Registration
	byToken map[string]*Registration
	byID    map[string]*Registration
}

// LoadAll loads the registration files and checks them against each other:
// ids and tokens must be unique and exclusive namespaces must not overlap.
func LoadAll(paths []string) (*Registry, error) {
	regs := make([]*Registration, 0, len(paths))
	for _, p := range paths {
		r, err := LoadFile(p)
		if err != nil {
			return nil, err
		}
		regs = append(regs, r)
	}
	return NewRegistry(regs)
}

// NewRegistry checks registrations against each other and indexes them.
func NewRegistry(regs []*Registration) (*Registry, error) {
	reg := &Registry{byToken: make(map[string]*Registration), byID: make(map[string]*Registration)}
	tokens := make(map[string]string) // token -> "file: field"
	senders := make(map[string]string)
	for _, r := range regs {
		if prev, ok := reg.byID[r.ID]; ok {
			return nil, fmt.Errorf("appservice registration %s: id: %q is already used by %s", r.Path, r.ID, prev.Path)
		}
		for _, t := range []struct{ field, value string }{{"as_token", r.AppToken}, {"hs_token", r.ServerToken}} {
			if prev, ok := tokens[t.value]; ok {
				return nil, fmt.Errorf("appservice registration %s: %s: the same token is already used as %s", r.Path, t.field, prev)
			}
			tokens[t.value] = r.Path + ": " + t.field
		}
		if prev, ok := senders[r.SenderLocalpart]; ok {
			return nil, fmt.Errorf("appservice registration %s: sender_localpart: %q is already the sender of %s", r.Path, r.SenderLocalpart, prev)
		}
		senders[r.SenderLocalpart] = r.Path
		for _, other := range reg.list {
			if err := checkOverlap(r, other); err != nil {
				return nil, err
			}
		}
		reg.list = append(reg.list, r)
		reg.byID[r.ID] = r
		reg.byToken[r.AppToken] = r
	}
	return reg, nil
}

// checkOverlap refuses two registrations whose exclusive namespaces could
// claim the same id. Whether two regular expressions intersect is not
// decidable in general here; we test each exclusive regex against example
// ids generated from the other's regex (identical regexes, one a prefix of
// the other, "@bot_.*" against "@bot_a.*" and the like are all caught).
func checkOverlap(a, b *Registration) error {
	kinds := []struct {
		field string
		a, b  []namespace
	}{
		{"namespaces.users", a.users, b.users},
		{"namespaces.aliases", a.aliases, b.aliases},
		{"namespaces.rooms", a.rooms, b.rooms},
	}
	for _, k := range kinds {
		for _, x := range k.a {
			for _, y := range k.b {
				if !x.exclusive && !y.exclusive {
					continue
				}
				if regexesOverlap(x.re, y.re) {
					return fmt.Errorf("appservice registration %s: %s: %q overlaps %q of %s, and one of them is exclusive",
						a.Path, k.field, x.source, y.source, b.Path)
				}
			}
		}
	}
	return nil
}

func regexesOverlap(x, y *regexp.Regexp) bool {
	for _, s := range examples(x) {
		if y.MatchString(s) {
			return true
		}
	}
	for _, s := range examples(y) {
		if x.MatchString(s) {
			return true
		}
	}
	return false
}

// errNoExample is returned when a regex cannot produce a sample.
var errNoExample = errors.New("no example")

// examples returns a few strings the regex matches, built from its syntax
// tree: the shortest choice at every point, and variants that take each
// repetition once or with a typical id character.
func examples(re *regexp.Regexp) []string {
	var out []string
	for _, fill := range []string{"", "a", "x1", "_"} {
		if s, err := exampleOf(re.String(), fill); err == nil && re.MatchString(s) {
			out = append(out, s)
		}
	}
	return out
}

func exampleOf(expr, fill string) (string, error) {
	tree, err := parseSyntax(expr)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := writeExample(&b, tree, fill); err != nil {
		return "", err
	}
	return b.String(), nil
}

// List returns the registrations in load order.
func (r *Registry) List() []*Registration { return r.list }

// ByToken finds the appservice whose as_token this is.
func (r *Registry) ByToken(token string) *Registration {
	if r == nil {
		return nil
	}
	return r.byToken[token]
}

// ByID finds an appservice by its id.
func (r *Registry) ByID(id string) *Registration {
	if r == nil {
		return nil
	}
	return r.byID[id]
}

// UserOwner returns the appservice with an exclusive namespace holding
// userID (nil when none claims it).
func (r *Registry) UserOwner(userID string) *Registration {
	if r == nil {
		return nil
	}
	for _, reg := range r.list {
		if reg.OwnsUser(userID) {
			return reg
		}
	}
	return nil
}

// AliasOwner returns the appservice with an exclusive namespace holding alias.
func (r *Registry) AliasOwner(alias string) *Registration {
	if r == nil {
		return nil
	}
	for _, reg := range r.list {
		if reg.OwnsAlias(alias) {
			return reg
		}
	}
	return nil
}
