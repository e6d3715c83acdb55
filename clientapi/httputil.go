package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/lib/pq"
	"github.com/lib/pq/pqerror"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/storage"
)

// handler is the shape of every endpoint: it writes its own success response
// and returns an error for everything else, which writeError renders.
type handler func(w http.ResponseWriter, r *http.Request) error

// writeJSON writes v as a JSON response.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeRawJSON(w, status, b)
}

// writeRawJSON writes body, which must already be JSON.
func writeRawJSON(w http.ResponseWriter, status int, body []byte) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return nil
}

// empty is the {} body of endpoints that return nothing.
var empty = struct{}{}

// writeError renders err as a Matrix error. RespErrors go out as they are;
// storage.ErrNotFound becomes M_NOT_FOUND; anything else is an internal
// error: logged in full, shown to the client as a plain 500 M_UNKNOWN.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var respErr mautrix.RespError
	var maxBytes *http.MaxBytesError
	switch {
	case errors.As(err, &respErr):
		respErr.InternalError = ""
		if respErr.StatusCode == 0 {
			respErr.StatusCode = http.StatusBadRequest
		}
		if respErr.StatusCode >= 500 {
			log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		} else {
			log.DebugContext(r.Context(), "request refused", "method", r.Method, "path", r.URL.Path, "errcode", respErr.ErrCode, "error", respErr.Err)
		}
		respErr.Write(w)
	case errors.As(err, &maxBytes):
		mautrix.MTooLarge.WithMessage("Request body is larger than %d bytes", maxBytes.Limit).Write(w)
	case errors.Is(err, storage.ErrNotFound):
		mautrix.MNotFound.WithMessage("Not found").Write(w)
	case isNULText(err):
		// Client text PostgreSQL cannot store (it has no U+0000 in text):
		// the client's input, not a server fault.
		log.DebugContext(r.Context(), "request refused: NUL in text", "method", r.Method, "path", r.URL.Path)
		mautrix.MInvalidParam.WithMessage("Text containing the NUL character (U+0000) cannot be stored").Write(w)
	case errors.Is(err, context.Canceled):
		// The client went away or the server is shutting down; if anyone is
		// still listening, tell them to retry rather than send an empty 200.
		log.DebugContext(r.Context(), "request cancelled", "path", r.URL.Path)
		mautrix.MUnknown.WithStatus(http.StatusServiceUnavailable).WithMessage("Request cancelled; please retry").Write(w)
	default:
		log.ErrorContext(r.Context(), "internal error", "method", r.Method, "path", r.URL.Path, "err", err)
		mautrix.MUnknown.WithMessage("Internal server error").Write(w)
	}
}

// decodeJSON reads a JSON object body into v: M_NOT_JSON when the body is not
// JSON at all, M_BAD_JSON when it is JSON of the wrong shape or nested deeper
// than maxJSONDepth, M_TOO_LARGE over the body limit.
func decodeJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var maxBytes *http.MaxBytesError
		if errors.As(err, &maxBytes) {
			return maxBytes
		}
		return mautrix.MNotJSON.WithMessage("Could not read request body")
	}
	return decodeJSONBytes(body, v)
}

func decodeJSONBytes(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	if err := checkJSONDepth(body); err != nil {
		return err
	}
	if !json.Valid(body) {
		return mautrix.MNotJSON.WithMessage("Content not JSON.")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return mautrix.MBadJSON.WithMessage("Invalid type for field %q: expected %s", typeErr.Field, typeErr.Type)
		}
		return mautrix.MBadJSON.WithMessage("Invalid JSON: %v", err)
	}
	return nil
}

// readJSONObject reads a body that must be a JSON object and returns it raw.
func readJSONObject(r *http.Request) (json.RawMessage, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var maxBytes *http.MaxBytesError
		if errors.As(err, &maxBytes) {
			return nil, maxBytes
		}
		return nil, mautrix.MNotJSON.WithMessage("Could not read request body")
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return json.RawMessage("{}"), nil
	}
	if err := checkJSONDepth(body); err != nil {
		return nil, err
	}
	if !json.Valid(body) {
		return nil, mautrix.MNotJSON.WithMessage("Content not JSON.")
	}
	if trimmed[0] != '{' {
		return nil, mautrix.MBadJSON.WithMessage("Body must be a JSON object")
	}
	return json.RawMessage(body), nil
}

// badParam is M_INVALID_PARAM with a message.
func badParam(format string, args ...any) error {
	return mautrix.MInvalidParam.WithMessage(format, args...)
}

// maxJSONDepth is how deeply arrays and objects may nest in a request body.
// Matrix bodies nest a handful of levels (power levels, device keys, push
// rules: at most 5); the cap keeps the recursive decoders behind the
// handlers (canonical JSON, gjson, redaction) far from deep recursion on
// hostile input. Deeper bodies are refused before they are parsed.
const maxJSONDepth = 100

// checkJSONDepth returns M_BAD_JSON when body nests arrays or objects deeper
// than maxJSONDepth. It only counts brackets outside strings, so it works on
// any input in one pass without allocating; json.Valid decides the rest.
func checkJSONDepth(body []byte) error {
	if jsonDepthExceeds(body, maxJSONDepth) {
		return mautrix.MBadJSON.WithMessage("JSON nested deeper than %d levels", maxJSONDepth)
	}
	return nil
}

// jsonDepthExceeds reports whether brackets outside strings nest deeper than limit.
func jsonDepthExceeds(b []byte, limit int) bool {
	depth := 0
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inString {
			switch c {
			case '\\':
				i++ // the escaped character cannot end the string
			case '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			if depth++; depth > limit {
				return true
			}
		case '}', ']':
			depth--
		}
	}
	return false
}

// isNULText reports PostgreSQL's refusal of a U+0000 in a text value
// (SQLSTATE 22021, "invalid byte sequence for encoding UTF8: 0x00"). SQLite
// stores such text; on PostgreSQL a path parameter or JSON string holding
// it would otherwise become a 500.
func isNULText(err error) bool {
	var pqErr *pq.Error
	return errors.As(err, &pqErr) && pqErr.Code == pqerror.CharacterNotInRepertoire
}

// refuseNULPath answers 400 M_INVALID_PARAM for a request whose path holds
// U+0000 (%00). No identifier, event type, state key or txnId may contain it
// (PostgreSQL cannot even store one), and refusing it here keeps it out of
// the batched writes of package rooms, where it would fail other clients'
// requests committed in the same transaction.
func refuseNULPath(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.IndexByte(r.URL.Path, 0) >= 0 {
			mautrix.MInvalidParam.WithMessage("The request path contains a NUL character").Write(w)
			return
		}
		next.ServeHTTP(w, r)
	})
}
