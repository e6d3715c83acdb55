package appservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// callAS makes one authenticated request (hs_token as Bearer) to the
// appservice and returns the status and up to 4 KiB of the response body.
func callAS(ctx context.Context, client *http.Client, reg *Registration, method, path string, body []byte) (int, []byte, error) {
	if reg.URL == "" {
		return 0, nil, errNoURL
	}
	target := strings.TrimRight(reg.URL, "/") + path
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return 0, nil, fmt.Errorf("building request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+reg.ServerToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // let the connection be reused
	return resp.StatusCode, out, nil
}

var errNoURL = errors.New("the appservice has no url")

// PingError is why a ping failed, in the spec's terms
// (https://spec.matrix.org/v1.12/client-server-api/#post_matrixclientv1appservicesappserviceidping).
type PingError struct {
	ErrCode    string // M_URL_NOT_SET, M_BAD_STATUS, M_CONNECTION_FAILED, M_CONNECTION_TIMEOUT
	HTTPStatus int    // what the homeserver answers
	Status     int    // the appservice's status (M_BAD_STATUS)
	Body       string // the appservice's body (M_BAD_STATUS)
	Message    string
}

func (e *PingError) Error() string { return e.ErrCode + ": " + e.Message }

// Ping calls the appservice's /_matrix/app/v1/ping and measures the round trip.
func (d *Deliverer) Ping(ctx context.Context, reg *Registration, txnID string) (time.Duration, error) {
	if reg.URL == "" {
		return 0, &PingError{ErrCode: "M_URL_NOT_SET", HTTPStatus: http.StatusBadRequest, Message: "Application service URL is not set"}
	}
	body := []byte(`{}`)
	if txnID != "" {
		body = mustMarshal(map[string]string{"transaction_id": txnID})
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
	defer cancel()
	start := time.Now()
	status, respBody, err := callAS(ctx, d.client, reg, http.MethodPost, "/_matrix/app/v1/ping", body)
	elapsed := time.Since(start)
	if err != nil {
		var uerr *url.Error
		if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &uerr) && uerr.Timeout()) {
			return 0, &PingError{ErrCode: "M_CONNECTION_TIMEOUT", HTTPStatus: http.StatusGatewayTimeout, Message: "Connection to application service timed out"}
		}
		return 0, &PingError{ErrCode: "M_CONNECTION_FAILED", HTTPStatus: http.StatusBadGateway, Message: "Failed to connect to application service"}
	}
	if status < 200 || status > 299 {
		return 0, &PingError{ErrCode: "M_BAD_STATUS", HTTPStatus: http.StatusBadGateway, Status: status, Body: string(respBody),
			Message: fmt.Sprintf("Application service returned HTTP %d", status)}
	}
	return elapsed, nil
}

// QueryUser asks the appservices whose namespaces hold userID whether it
// exists (GET /_matrix/app/v1/users/{userId}); an appservice answering 200
// is expected to have created the user before answering.
func (d *Deliverer) QueryUser(ctx context.Context, userID string) bool {
	for _, reg := range d.registry.list {
		if reg.URL == "" || !reg.IsInterestedInUser(userID) {
			continue
		}
		if d.query(ctx, reg, "/_matrix/app/v1/users/"+url.PathEscape(userID)) {
			return true
		}
	}
	return false
}

// QueryAlias is QueryUser for room aliases (GET /_matrix/app/v1/rooms/{alias}).
func (d *Deliverer) QueryAlias(ctx context.Context, alias string) bool {
	for _, reg := range d.registry.list {
		if reg.URL == "" || !reg.IsInterestedInAlias(alias) {
			continue
		}
		if d.query(ctx, reg, "/_matrix/app/v1/rooms/"+url.PathEscape(alias)) {
			return true
		}
	}
	return false
}

func (d *Deliverer) query(ctx context.Context, reg *Registration, path string) bool {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
	defer cancel()
	status, _, err := callAS(ctx, d.client, reg, http.MethodGet, path, nil)
	if err != nil {
		d.log.WarnContext(ctx, "appservice query failed", "appservice", reg.ID, "err", err)
		return false
	}
	return status >= 200 && status <= 299
}
