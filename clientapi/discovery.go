package clientapi

import (
	"net/http"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
)

// registerDiscovery serves what clients ask before (or right after) logging
// in: server discovery, supported versions, capabilities, TURN servers and
// third-party protocols.
func (a *API) registerDiscovery(rt routes) {
	rt.exact("/.well-known/matrix/client", a.public(a.wellKnownClient), http.MethodGet)
	rt.exact("/_matrix/client/versions", a.public(a.clientVersions), http.MethodGet)
	rt.client("/capabilities", a.authed(a.capabilities), http.MethodGet)
	rt.client("/voip/turnServer", a.authed(a.turnServer), http.MethodGet)
	rt.client("/thirdparty/protocols", a.authed(a.thirdPartyProtocols), http.MethodGet)
}

// wellKnownClient answers GET /.well-known/matrix/client
// (https://spec.matrix.org/v1.12/client-server-api/#getwell-knownmatrixclient).
// Without a configured public base URL there is nothing true to say, so 404.
func (a *API) wellKnownClient(w http.ResponseWriter, r *http.Request) error {
	if a.cfg.PublicBaseURL == "" {
		return mautrix.MNotFound.WithMessage("No public base URL is configured")
	}
	return writeJSON(w, http.StatusOK, map[string]any{
		"m.homeserver": map[string]string{"base_url": a.cfg.PublicBaseURL},
	})
}

// supportedVersions are the spec versions we serve; r0 paths are kept for
// older clients.
var supportedVersions = []string{
	"r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1",
	"v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
}

// unstableFeatures lists only features this server implements: private read
// receipts, threads (relations and threaded receipts) and cross-signing.
var unstableFeatures = map[string]bool{
	"org.matrix.msc2285.stable":    true,
	"org.matrix.msc3440.stable":    true,
	"org.matrix.e2e_cross_signing": true,
}

// clientVersions answers GET /_matrix/client/versions. It needs no token and
// ignores an invalid one (clients call it before logging in).
func (a *API) clientVersions(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, map[string]any{
		"versions":          supportedVersions,
		"unstable_features": unstableFeatures,
	})
}

// capabilities answers GET /capabilities
// (https://spec.matrix.org/v1.12/client-server-api/#capabilities-negotiation).
func (a *API) capabilities(w http.ResponseWriter, r *http.Request) error {
	available := map[string]string{}
	for v := range gomatrixserverlib.StableRoomVersions() {
		available[string(v)] = "stable"
	}
	enabled := func(b bool) map[string]bool { return map[string]bool{"enabled": b} }
	return writeJSON(w, http.StatusOK, map[string]any{
		"capabilities": map[string]any{
			"m.change_password": enabled(true),
			"m.room_versions": map[string]any{
				"default":   string(rooms.DefaultRoomVersion),
				"available": available,
			},
			"m.set_displayname": enabled(true),
			"m.set_avatar_url":  enabled(true),
			"m.3pid_changes":    enabled(false),
			"m.get_login_token": enabled(false),
		},
	})
}

// turnServer answers GET /voip/turnServer with the configured TURN
// credentials, or {} when no TURN server is configured (clients then fall
// back to their own STUN servers).
func (a *API) turnServer(w http.ResponseWriter, r *http.Request) error {
	t := a.cfg.TURN
	if len(t.URIs) == 0 {
		return writeJSON(w, http.StatusOK, empty)
	}
	return writeJSON(w, http.StatusOK, map[string]any{
		"uris":     t.URIs,
		"username": t.Username,
		"password": t.Password,
		"ttl":      int64(t.TTL.Seconds()),
	})
}

// thirdPartyProtocols answers GET /thirdparty/protocols: no bridges expose
// third-party lookups through this server, so the map is empty.
func (a *API) thirdPartyProtocols(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, empty)
}
