package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// maxSyncTimeout caps a long-poll; clients re-poll anyway.
const maxSyncTimeout = 5 * time.Minute

func (a *API) registerSync(rt routes) {
	rt.client("/sync", a.authed(a.handleSync), http.MethodGet)
}

// syncToken is a /sync position: everything up to Pos has been delivered,
// and to-device messages up to ToDevice (which lags Pos only when a batch of
// to-device messages was cut short). Rendered "s<pos>" or "s<pos>_<todevice>".
type syncToken struct {
	Pos      storage.StreamPos
	ToDevice storage.StreamPos
}

func (t syncToken) String() string {
	if t.ToDevice == t.Pos {
		return rooms.StreamToken(t.Pos)
	}
	return rooms.StreamToken(t.Pos) + "_" + strconv.FormatInt(int64(t.ToDevice), 10)
}

func parseSyncToken(s string) (syncToken, error) {
	main, td, hasTD := strings.Cut(s, "_")
	pos, err := rooms.ParseStreamToken(main)
	if err != nil {
		return syncToken{}, err
	}
	tok := syncToken{Pos: pos, ToDevice: pos}
	if hasTD {
		n, err := strconv.ParseInt(td, 10, 64)
		if err != nil || n < 0 || storage.StreamPos(n) > pos {
			return syncToken{}, errors.New("bad to-device position")
		}
		tok.ToDevice = storage.StreamPos(n)
	}
	return tok, nil
}

// syncRequest is a parsed GET /sync.
type syncRequest struct {
	session   *Session
	filter    mautrix.Filter
	since     *syncToken
	fullState bool
	timeout   time.Duration
}

func (a *API) handleSync(w http.ResponseWriter, r *http.Request) error {
	req, err := a.parseSyncRequest(r)
	if err != nil {
		return err
	}
	if req.waitsForSync() {
		release, err := a.longPolls.acquire(req.session.UserID)
		if err != nil {
			return err
		}
		defer release()
	}
	ctx := r.Context()
	if p := r.URL.Query().Get("set_presence"); p != "" {
		if p != "online" && p != "offline" && p != "unavailable" {
			return badParam("set_presence must be online, offline or unavailable")
		}
		if err := a.setPresence(ctx, req.session.UserID, p, nil); err != nil {
			return err
		}
	}
	resp, err := a.waitForSync(ctx, req)
	if err != nil {
		return err
	}
	body, err := resp.appendJSON(make([]byte, 0, 4096))
	if err != nil {
		return err
	}
	return writeRawJSON(w, http.StatusOK, body)
}

func (a *API) parseSyncRequest(r *http.Request) (*syncRequest, error) {
	q := r.URL.Query()
	s := sessionFrom(r.Context())
	req := &syncRequest{session: s, filter: a.syncFilters.def}
	if f := q.Get("filter"); f != "" {
		if cached, ok := a.syncFilters.get(s.UserID, f); ok {
			req.filter = *cached
		} else {
			filter, err := a.loadSyncFilter(r.Context(), s.UserID, f)
			if err != nil {
				return nil, err
			}
			req.filter = filter
			a.syncFilters.put(s.UserID, f, &filter)
		}
	}
	if since := q.Get("since"); since != "" {
		tok, err := parseSyncToken(since)
		if err != nil {
			return nil, badParam("Invalid since token")
		}
		req.since = &tok
	}
	if fs := q.Get("full_state"); fs == "true" {
		req.fullState = true
	}
	if t := q.Get("timeout"); t != "" {
		ms, err := strconv.ParseInt(t, 10, 64)
		if err != nil || ms < 0 {
			return nil, badParam("timeout must be a non-negative integer")
		}
		req.timeout = min(time.Duration(ms)*time.Millisecond, maxSyncTimeout)
	}
	return req, nil
}

// loadSyncFilter parses /sync's filter parameter: inline JSON or the id of
// a stored filter.
func (a *API) loadSyncFilter(ctx context.Context, userID, param string) (mautrix.Filter, error) {
	raw := json.RawMessage(param)
	if !strings.HasPrefix(strings.TrimSpace(param), "{") {
		stored, err := a.db.FilterByID(ctx, userID, param)
		if errors.Is(err, storage.ErrNotFound) {
			return mautrix.Filter{}, mautrix.MNotFound.WithMessage("No such filter")
		} else if err != nil {
			return mautrix.Filter{}, err
		}
		raw = stored
	}
	var filter mautrix.Filter
	if err := json.Unmarshal(raw, &filter); err != nil {
		return mautrix.Filter{}, mautrix.MBadJSON.WithMessage("Invalid filter: %v", err)
	}
	return mergeFilterDefaults(filter), nil
}

// mergeFilterDefaults fills the parts a client's filter leaves out.
func mergeFilterDefaults(f mautrix.Filter) mautrix.Filter {
	def := mautrix.DefaultFilter()
	if f.AccountData == nil {
		f.AccountData = def.AccountData
	}
	if f.Presence == nil {
		f.Presence = def.Presence
	}
	if f.Room == nil {
		f.Room = def.Room
	}
	for _, part := range []**mautrix.FilterPart{&f.Room.AccountData, &f.Room.Ephemeral, &f.Room.State, &f.Room.Timeline} {
		if *part == nil {
			*part = mautrix.DefaultFilterPart()
		}
	}
	if f.Room.Timeline.Limit <= 0 {
		f.Room.Timeline.Limit = 20
	}
	f.Room.Timeline.Limit = min(f.Room.Timeline.Limit, 1000)
	return f
}

// waitForSync builds the response, long-polling until something for the
// user arrives or the timeout passes.
func (a *API) waitForSync(ctx context.Context, req *syncRequest) (*syncResponse, error) {
	n := a.rooms.Notifier()
	if req.since == nil || req.fullState || req.timeout == 0 {
		return a.buildSync(ctx, req, n.Latest())
	}
	timer := time.NewTimer(req.timeout)
	defer timer.Stop()
	waitFrom := req.since.Pos
	for {
		// Nothing can have arrived for this user unless their stream moved.
		select {
		case <-n.Listen(req.session.UserID, waitFrom):
		default:
			if req.since.ToDevice < req.since.Pos {
				break // pending to-device messages: answer at once
			}
			select {
			case <-n.Listen(req.session.UserID, waitFrom):
			case <-timer.C:
				return a.buildSync(ctx, req, n.Latest())
			case <-ctx.Done():
				// Server shutdown (or the client left): answer normally so a
				// client that is still there simply polls again.
				return a.buildSync(context.WithoutCancel(ctx), req, n.Latest())
			}
		}
		to := n.Latest()
		resp, err := a.buildSync(ctx, req, to)
		if err != nil || !resp.isEmpty() {
			return resp, err
		}
		waitFrom = to
	}
}
