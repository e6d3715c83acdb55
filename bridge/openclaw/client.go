package openclaw

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client calls a running AgentSpace over HTTP: the Matrix client-server API
// and AgentSpace's admin API, as the built-in agents appservice (its
// as_token) or with a user's token.
type Client struct {
	// BaseURL is the server, e.g. http://127.0.0.1:8008.
	BaseURL string
	// ASToken is the agents appservice's as_token.
	ASToken string
	// HTTP is the client to use (nil: 30 s timeout).
	HTTP *http.Client
}

// APIError is a Matrix error answer.
type APIError struct {
	Status  int
	ErrCode string `json:"errcode"`
	Message string `json:"error"`
}

func (e *APIError) Error() string {
	if e.ErrCode == "" {
		return fmt.Sprintf("HTTP %d", e.Status)
	}
	return fmt.Sprintf("%s (HTTP %d): %s", e.ErrCode, e.Status, e.Message)
}

// IsCode reports whether err is a Matrix error with the errcode.
func IsCode(err error, code string) bool {
	e, ok := err.(*APIError)
	return ok && e.ErrCode == code
}

// Do sends a JSON request (body nil: none) with token ("": the as_token)
// and decodes a JSON answer into out (nil: ignored). Non-2xx answers are
// *APIError.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, token string, body, out any) error {
	resp, err := c.Raw(ctx, method, path, query, token, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// Raw is Do without decoding: the caller reads (and closes) the body of a
// 2xx answer, e.g. to stream a transcript.
func (c *Client) Raw(ctx context.Context, method, path string, query url.Values, token string, body any) (*http.Response, error) {
	var rdr io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rdr = bytes.NewReader(b)
	}
	u := strings.TrimRight(c.BaseURL, "/") + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rdr)
	if err != nil {
		return nil, err
	}
	if token == "" {
		token = c.ASToken
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		e := &APIError{Status: resp.StatusCode}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(e)
		return nil, e
	}
	return resp, nil
}

// pathEscape escapes a path segment (room ids, aliases and user ids).
func pathEscape(s string) string { return url.PathEscape(s) }
