package rooms

import (
	"testing"
)

// FuzzParseStreamToken: pagination and sync tokens from clients. Whatever
// parses is a non-negative position that StreamToken renders back to a
// token parsing to the same position.
func FuzzParseStreamToken(f *testing.F) {
	for _, s := range []string{"s0", "s42", "s42_7", "t3-17", "t-5", "s-1", "s", "t", "s9223372036854775807",
		"s9223372036854775808", "t1-2-3", "s1e3", "s 1", "s٤٢", "S1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		pos, err := ParseStreamToken(tok)
		if err != nil {
			if err != ErrBadToken {
				t.Fatalf("ParseStreamToken(%q): unexpected error %v", tok, err)
			}
			return
		}
		if pos < 0 {
			t.Fatalf("ParseStreamToken(%q) = %d", tok, pos)
		}
		again, err := ParseStreamToken(StreamToken(pos))
		if err != nil || again != pos {
			t.Fatalf("ParseStreamToken(%q) = %d; StreamToken renders %q, which parses to %d, %v", tok, pos, StreamToken(pos), again, err)
		}
	})
}
