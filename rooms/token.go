package rooms

import (
	"errors"
	"strconv"
	"strings"

	"github.com/agentspace/agentspace/storage"
)

// StreamToken renders a stream position as a pagination/sync token "s<pos>":
// everything at or before pos lies before the token.
func StreamToken(pos storage.StreamPos) string {
	return "s" + strconv.FormatInt(int64(pos), 10)
}

// ErrBadToken is returned for tokens that do not parse.
var ErrBadToken = errors.New("invalid stream token")

// ParseStreamToken parses "s<pos>" (as produced by StreamToken and /sync's
// next_batch, whose optional "_<n>" suffix is ignored here) and Synapse-style
// "t<topo>-<stream>" tokens (the stream part is used).
func ParseStreamToken(tok string) (storage.StreamPos, error) {
	var num string
	switch {
	case strings.HasPrefix(tok, "s"):
		num, _, _ = strings.Cut(tok[1:], "_")
	case strings.HasPrefix(tok, "t"):
		_, stream, ok := strings.Cut(tok[1:], "-")
		if !ok {
			return 0, ErrBadToken
		}
		num = stream
	default:
		return 0, ErrBadToken
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, ErrBadToken
	}
	return storage.StreamPos(n), nil
}
