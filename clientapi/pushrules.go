package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/pushrules"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// pushRule is one push rule as the spec renders it
// (https://spec.matrix.org/v1.12/client-server-api/#push-rules). Conditions
// and actions stay raw JSON so that what a client stored comes back exactly
// (mautrix's types drop empty patterns and false values). Conditions is
// always present (possibly []) for override and underride rules and absent
// otherwise: Element fails on an override rule without a conditions array.
type pushRule struct {
	RuleID     string             `json:"rule_id"`
	Default    bool               `json:"default"`
	Enabled    bool               `json:"enabled"`
	Pattern    *string            `json:"pattern,omitempty"`
	Conditions *[]json.RawMessage `json:"conditions,omitempty"`
	Actions    []json.RawMessage  `json:"actions"`
}

// pushRuleset is the rule set of one scope, each kind in priority order.
type pushRuleset struct {
	Override  []pushRule `json:"override"`
	Content   []pushRule `json:"content"`
	Room      []pushRule `json:"room"`
	Sender    []pushRule `json:"sender"`
	Underride []pushRule `json:"underride"`
}

// Push rule kinds, in the order they are evaluated.
var pushRuleKinds = []string{"override", "content", "room", "sender", "underride"}

// kind returns the list of rules of a kind (nil for an unknown kind).
func (rs *pushRuleset) kind(k string) *[]pushRule {
	switch k {
	case "override":
		return &rs.Override
	case "content":
		return &rs.Content
	case "room":
		return &rs.Room
	case "sender":
		return &rs.Sender
	case "underride":
		return &rs.Underride
	}
	return nil
}

// normalize gives every list and every rule the fields clients rely on:
// [] rather than null, conditions on override/underride rules only.
func (rs *pushRuleset) normalize() {
	for _, k := range pushRuleKinds {
		list := rs.kind(k)
		if *list == nil {
			*list = []pushRule{}
		}
		for i := range *list {
			rule := &(*list)[i]
			if rule.Actions == nil {
				rule.Actions = []json.RawMessage{}
			}
			if k == "override" || k == "underride" {
				if rule.Conditions == nil || *rule.Conditions == nil {
					rule.Conditions = &[]json.RawMessage{}
				}
			} else {
				rule.Conditions = nil
			}
			if k != "content" {
				rule.Pattern = nil
			}
		}
	}
}

func findPushRule(list []pushRule, ruleID string) int {
	return slices.IndexFunc(list, func(r pushRule) bool { return r.RuleID == ruleID })
}

// storedPushRules is what the push_rules table holds per user: the user's
// own rules and their changes to server-default rules (keyed "kind/rule_id").
type storedPushRules struct {
	User     pushRuleset                  `json:"user"`
	Defaults map[string]defaultRuleChange `json:"defaults,omitempty"`
}

// defaultRuleChange is a user's change to a server-default rule.
type defaultRuleChange struct {
	Enabled *bool              `json:"enabled,omitempty"`
	Actions *[]json.RawMessage `json:"actions,omitempty"`
}

func decodeStoredPushRules(raw json.RawMessage) (storedPushRules, error) {
	var st storedPushRules
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &st); err != nil {
			return st, fmt.Errorf("decoding stored push rules: %w", err)
		}
	}
	if st.Defaults == nil {
		st.Defaults = map[string]defaultRuleChange{}
	}
	return st, nil
}

// buildPushRuleset merges the defaults, the user's changes to them and the
// user's own rules in the order Synapse uses: .m.rule.master first, then in
// each kind the user's rules before the server-default ones.
func buildPushRuleset(userID string, st storedPushRules) pushRuleset {
	defs := defaultPushRules(userID)
	for _, k := range pushRuleKinds {
		list := *defs.kind(k)
		for i := range list {
			ch, ok := st.Defaults[k+"/"+list[i].RuleID]
			if !ok {
				continue
			}
			if ch.Enabled != nil {
				list[i].Enabled = *ch.Enabled
			}
			if ch.Actions != nil {
				list[i].Actions = *ch.Actions
			}
		}
	}
	var out pushRuleset
	var master, otherOverrides []pushRule
	for _, r := range defs.Override {
		if r.RuleID == ".m.rule.master" {
			master = append(master, r)
		} else {
			otherOverrides = append(otherOverrides, r)
		}
	}
	out.Override = slices.Concat(master, st.User.Override, otherOverrides)
	out.Content = slices.Concat(st.User.Content, defs.Content)
	out.Room = slices.Clone(st.User.Room)
	out.Sender = slices.Clone(st.User.Sender)
	out.Underride = slices.Concat(st.User.Underride, defs.Underride)
	out.normalize()
	return out
}

// loadPushRuleset returns the user's full current global rule set.
func (a *API) loadPushRuleset(ctx context.Context, userID string) (pushRuleset, error) {
	raw, err := a.db.PushRules(ctx, userID)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return pushRuleset{}, fmt.Errorf("loading push rules of %s: %w", userID, err)
	}
	st, err := decodeStoredPushRules(raw)
	if err != nil {
		return pushRuleset{}, err
	}
	return buildPushRuleset(userID, st), nil
}

// pushRulesContent is the content of the user's m.push_rules account data
// ({"global": ruleset}), defaults included. /sync sends it in an initial
// sync when the user never changed a rule (nothing is stored then).
func (a *API) pushRulesContent(ctx context.Context, userID string) (json.RawMessage, error) {
	rs, err := a.loadPushRuleset(ctx, userID)
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{"global": rs})
}

// pushRulesForEval returns the user's rules as mautrix's evaluator type
// (GetActions / GetMatchingRule), for notification counts.
func (a *API) pushRulesForEval(ctx context.Context, userID string) (*pushrules.PushRuleset, error) {
	rs, err := a.loadPushRuleset(ctx, userID)
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(rs)
	if err != nil {
		return nil, err
	}
	var out pushrules.PushRuleset
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("converting push rules: %w", err)
	}
	return &out, nil
}

// updatePushRules applies change to the user's stored rules in one write,
// which also stores the new full rule set as m.push_rules account data and
// wakes the user's /sync. An error from change aborts the update.
func (a *API) updatePushRules(ctx context.Context, userID string, change func(st *storedPushRules) error) error {
	return a.db.UpdatePushRules(ctx, userID, func(cur json.RawMessage) (json.RawMessage, json.RawMessage, error) {
		st, err := decodeStoredPushRules(cur)
		if err != nil {
			return nil, nil, err
		}
		if err := change(&st); err != nil {
			return nil, nil, err
		}
		rules, err := json.Marshal(st)
		if err != nil {
			return nil, nil, fmt.Errorf("encoding push rules: %w", err)
		}
		content, err := json.Marshal(map[string]any{"global": buildPushRuleset(userID, st)})
		if err != nil {
			return nil, nil, fmt.Errorf("encoding push rules: %w", err)
		}
		return rules, content, nil
	}, func(pos storage.StreamPos) {
		a.rooms.Notifier().Advance(pos, rooms.Wake{Users: []string{userID}})
	})
}

// registerPushRules serves the push rules API
// (https://spec.matrix.org/v1.12/client-server-api/#push-rules-api).
func (a *API) registerPushRules(rt routes) {
	rt.client("/pushrules/", a.authed(a.getPushRules), http.MethodGet)
	rt.client("/pushrules", a.authed(a.getPushRules), http.MethodGet)
	rt.client("/pushrules/{scope}/", a.authed(a.getPushRulesScope), http.MethodGet)
	rt.client("/pushrules/{scope}", a.authed(a.getPushRulesScope), http.MethodGet)
	rt.client("/pushrules/{scope}/{kind}/", a.authed(a.getPushRulesKind), http.MethodGet)
	rt.client("/pushrules/{scope}/{kind}/{ruleId}", a.authed(a.getPushRule), http.MethodGet)
	rt.client("/pushrules/{scope}/{kind}/{ruleId}", a.authed(a.putPushRule), http.MethodPut)
	rt.client("/pushrules/{scope}/{kind}/{ruleId}", a.authed(a.deletePushRule), http.MethodDelete)
	rt.client("/pushrules/{scope}/{kind}/{ruleId}/enabled", a.authed(a.getPushRuleEnabled), http.MethodGet)
	rt.client("/pushrules/{scope}/{kind}/{ruleId}/enabled", a.authed(a.putPushRuleEnabled), http.MethodPut)
	rt.client("/pushrules/{scope}/{kind}/{ruleId}/actions", a.authed(a.getPushRuleActions), http.MethodGet)
	rt.client("/pushrules/{scope}/{kind}/{ruleId}/actions", a.authed(a.putPushRuleActions), http.MethodPut)
}

var errPushRuleNotFound = mautrix.MNotFound.WithMessage("The push rule was not found.")

func pushRuleScope(r *http.Request) error {
	scope, err := ephVar(r, "scope")
	if err != nil {
		return err
	}
	if scope != "global" {
		return badParam("Unknown push rule scope %q: only \"global\" is supported", scope)
	}
	return nil
}

// pushRulePath decodes {scope}/{kind}[/{ruleId}] of a push rule request.
func pushRulePath(r *http.Request, withRule bool) (kind, ruleID string, err error) {
	if err = pushRuleScope(r); err != nil {
		return
	}
	if kind, err = ephVar(r, "kind"); err != nil {
		return
	}
	if !slices.Contains(pushRuleKinds, kind) {
		err = badParam("Unknown push rule kind %q", kind)
		return
	}
	if withRule {
		ruleID, err = ephVar(r, "ruleId")
	}
	return
}

// getPushRules answers GET /pushrules/.
func (a *API) getPushRules(w http.ResponseWriter, r *http.Request) error {
	content, err := a.pushRulesContent(r.Context(), sessionFrom(r.Context()).UserID)
	if err != nil {
		return err
	}
	return ephWriteRaw(w, content)
}

// getPushRulesScope answers GET /pushrules/global/.
func (a *API) getPushRulesScope(w http.ResponseWriter, r *http.Request) error {
	if err := pushRuleScope(r); err != nil {
		return err
	}
	rs, err := a.loadPushRuleset(r.Context(), sessionFrom(r.Context()).UserID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, rs)
}

// getPushRulesKind answers GET /pushrules/global/{kind}/ with that kind's list.
func (a *API) getPushRulesKind(w http.ResponseWriter, r *http.Request) error {
	kind, _, err := pushRulePath(r, false)
	if err != nil {
		return err
	}
	rs, err := a.loadPushRuleset(r.Context(), sessionFrom(r.Context()).UserID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, *rs.kind(kind))
}

// currentPushRule finds one rule of the user's full rule set.
func (a *API) currentPushRule(r *http.Request) (*pushRule, error) {
	kind, ruleID, err := pushRulePath(r, true)
	if err != nil {
		return nil, err
	}
	rs, err := a.loadPushRuleset(r.Context(), sessionFrom(r.Context()).UserID)
	if err != nil {
		return nil, err
	}
	list := *rs.kind(kind)
	i := findPushRule(list, ruleID)
	if i < 0 {
		return nil, errPushRuleNotFound
	}
	return &list[i], nil
}

// getPushRule answers GET /pushrules/global/{kind}/{ruleId}.
func (a *API) getPushRule(w http.ResponseWriter, r *http.Request) error {
	rule, err := a.currentPushRule(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, rule)
}

// getPushRuleEnabled answers GET /pushrules/global/{kind}/{ruleId}/enabled.
func (a *API) getPushRuleEnabled(w http.ResponseWriter, r *http.Request) error {
	rule, err := a.currentPushRule(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]bool{"enabled": rule.Enabled})
}

// getPushRuleActions answers GET /pushrules/global/{kind}/{ruleId}/actions.
func (a *API) getPushRuleActions(w http.ResponseWriter, r *http.Request) error {
	rule, err := a.currentPushRule(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"actions": rule.Actions})
}

// parsePushActions checks an actions array: "notify" or {"set_tweak": ...}
// objects. The historical dont_notify and coalesce are stripped, as the spec
// requires.
func parsePushActions(raw json.RawMessage) ([]json.RawMessage, error) {
	if raw == nil {
		return nil, mautrix.MBadJSON.WithMessage("Missing required field 'actions'")
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil || items == nil {
		return nil, mautrix.MBadJSON.WithMessage("'actions' must be an array")
	}
	out := make([]json.RawMessage, 0, len(items))
	for _, it := range items {
		var s string
		if json.Unmarshal(it, &s) == nil {
			switch s {
			case "notify":
				out = append(out, it)
			case "dont_notify", "coalesce":
			default:
				return nil, badParam("Unknown push rule action %q", s)
			}
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(it, &obj); err != nil || obj == nil {
			return nil, badParam("Invalid push rule action %s", it)
		}
		var tweak string
		if err := json.Unmarshal(obj["set_tweak"], &tweak); err != nil || tweak == "" {
			return nil, badParam("Invalid push rule action %s: expected a set_tweak object", it)
		}
		out = append(out, it)
	}
	return out, nil
}

// parsePushConditions checks a conditions array: objects with a string kind.
// Unknown kinds are kept (the spec says they never match).
func parsePushConditions(raw json.RawMessage) ([]json.RawMessage, error) {
	if raw == nil || string(raw) == "null" {
		return []json.RawMessage{}, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, mautrix.MBadJSON.WithMessage("'conditions' must be an array")
	}
	out := make([]json.RawMessage, 0, len(items))
	for _, it := range items {
		var c struct {
			Kind *string `json:"kind"`
		}
		if err := json.Unmarshal(it, &c); err != nil || c.Kind == nil || *c.Kind == "" {
			return nil, mautrix.MBadJSON.WithMessage("Invalid push condition %s: expected an object with a kind", it)
		}
		out = append(out, it)
	}
	return out, nil
}

// putPushRule answers PUT /pushrules/global/{kind}/{ruleId}: creates or
// replaces a user-defined rule, placed by the before/after query parameters.
func (a *API) putPushRule(w http.ResponseWriter, r *http.Request) error {
	userID := sessionFrom(r.Context()).UserID
	kind, ruleID, err := pushRulePath(r, true)
	if err != nil {
		return err
	}
	if strings.HasPrefix(ruleID, ".") {
		return badParam("Rule IDs starting with '.' are reserved for server-default rules")
	}
	if strings.ContainsAny(ruleID, `/\`) {
		return badParam("Rule IDs may not contain slashes or backslashes")
	}
	raw, err := readJSONObject(r)
	if err != nil {
		return err
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(raw, &body); err != nil {
		return mautrix.MBadJSON.WithMessage("Invalid JSON: %v", err)
	}
	actions, err := parsePushActions(body["actions"])
	if err != nil {
		return err
	}
	rule := pushRule{RuleID: ruleID, Enabled: true, Actions: actions}
	switch kind {
	case "override", "underride":
		conds, err := parsePushConditions(body["conditions"])
		if err != nil {
			return err
		}
		rule.Conditions = &conds
	case "content":
		var pattern string
		if err := json.Unmarshal(body["pattern"], &pattern); err != nil || body["pattern"] == nil {
			return mautrix.MBadJSON.WithMessage("Content rules need a string 'pattern'")
		}
		rule.Pattern = &pattern
	}
	q := r.URL.Query()
	before, after := q.Get("before"), q.Get("after")
	for _, anchor := range []string{before, after} {
		if strings.HasPrefix(anchor, ".") {
			return badParam("Cannot place a rule relative to a server-default rule")
		}
	}
	err = a.updatePushRules(r.Context(), userID, func(st *storedPushRules) error {
		list := st.User.kind(kind)
		pos := 0 // a new rule becomes the most important user-defined one
		if i := findPushRule(*list, ruleID); i >= 0 {
			rule.Enabled = (*list)[i].Enabled // updating keeps the enabled state
			*list = slices.Delete(*list, i, i+1)
			pos = i
		}
		if anchor := pushAnchor(before, after); anchor != "" {
			i := findPushRule(*list, anchor)
			if i < 0 {
				return mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("before/after rule not found: %s", anchor)
			}
			pos = i
			if before == "" {
				pos = i + 1
			}
		}
		*list = slices.Insert(*list, pos, rule)
		return nil
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// pushAnchor returns the rule to place a new rule next to: before wins
// over after, as the spec says.
func pushAnchor(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// deletePushRule answers DELETE /pushrules/global/{kind}/{ruleId}.
// Server-default rules cannot be deleted (only disabled).
func (a *API) deletePushRule(w http.ResponseWriter, r *http.Request) error {
	userID := sessionFrom(r.Context()).UserID
	kind, ruleID, err := pushRulePath(r, true)
	if err != nil {
		return err
	}
	if isDefaultPushRule(userID, kind, ruleID) {
		return badParam("Cannot delete a server-default push rule; disable it instead")
	}
	err = a.updatePushRules(r.Context(), userID, func(st *storedPushRules) error {
		list := st.User.kind(kind)
		i := findPushRule(*list, ruleID)
		if i < 0 {
			return errPushRuleNotFound
		}
		*list = slices.Delete(*list, i, i+1)
		return nil
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

func isDefaultPushRule(userID, kind, ruleID string) bool {
	if !strings.HasPrefix(ruleID, ".") {
		return false
	}
	defs := defaultPushRules(userID)
	return findPushRule(*defs.kind(kind), ruleID) >= 0
}

// pushRuleChange is an update of a rule's enabled flag or actions (nil: unchanged).
type pushRuleChange struct {
	enabled *bool
	actions []json.RawMessage
}

// changePushRule applies ch to a rule: for a server-default rule it is
// stored as the user's change of that rule, a user-defined rule is edited
// in place. M_NOT_FOUND for an unknown rule.
func (a *API) changePushRule(r *http.Request, ch pushRuleChange) error {
	userID := sessionFrom(r.Context()).UserID
	kind, ruleID, err := pushRulePath(r, true)
	if err != nil {
		return err
	}
	isDefault := isDefaultPushRule(userID, kind, ruleID)
	return a.updatePushRules(r.Context(), userID, func(st *storedPushRules) error {
		if isDefault {
			key := kind + "/" + ruleID
			d := st.Defaults[key]
			if ch.enabled != nil {
				d.Enabled = ch.enabled
			}
			if ch.actions != nil {
				acts := ch.actions
				d.Actions = &acts
			}
			st.Defaults[key] = d
			return nil
		}
		list := *st.User.kind(kind)
		i := findPushRule(list, ruleID)
		if i < 0 {
			return errPushRuleNotFound
		}
		if ch.enabled != nil {
			list[i].Enabled = *ch.enabled
		}
		if ch.actions != nil {
			list[i].Actions = ch.actions
		}
		return nil
	})
}

// putPushRuleEnabled answers PUT /pushrules/global/{kind}/{ruleId}/enabled.
func (a *API) putPushRuleEnabled(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Enabled *bool `json:"enabled"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if body.Enabled == nil {
		return mautrix.MBadJSON.WithMessage("Missing required field 'enabled'")
	}
	if err := a.changePushRule(r, pushRuleChange{enabled: body.Enabled}); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}

// putPushRuleActions answers PUT /pushrules/global/{kind}/{ruleId}/actions;
// it also changes the actions of server-default rules.
func (a *API) putPushRuleActions(w http.ResponseWriter, r *http.Request) error {
	raw, err := readJSONObject(r)
	if err != nil {
		return err
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(raw, &body); err != nil {
		return mautrix.MBadJSON.WithMessage("Invalid JSON: %v", err)
	}
	actions, err := parsePushActions(body["actions"])
	if err != nil {
		return err
	}
	if err := a.changePushRule(r, pushRuleChange{actions: actions}); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, empty)
}
