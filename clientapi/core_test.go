package clientapi

import (
	"net/http"
	"testing"
)

func TestUnknownEndpointAndCORS(t *testing.T) {
	ts := newTestServer(t)
	ts.wantErr(http.StatusNotFound, "M_UNRECOGNIZED", "GET", "/_matrix/client/v3/nope", "", nil)
	status, raw := ts.doRaw("OPTIONS", "/_matrix/client/v3/sync", "", nil)
	if status != http.StatusOK || string(raw) != "{}" {
		t.Fatalf("OPTIONS: %d %s", status, raw)
	}
}
