package webhook

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestSlackEscapeAndTruncate(t *testing.T) {
	if got := slackEscape("a<b>&c <@U123>"); got != "a&lt;b&gt;&amp;c &lt;@U123&gt;" {
		t.Errorf("slackEscape: %q", got)
	}
	if got := truncate("short", 10); got != "short" {
		t.Errorf("truncate kept %q", got)
	}
	long := strings.Repeat("한", 2500) // multi-byte: cut by characters, never inside one
	got := truncate(long, 2000)
	if utf8.RuneCountInString(got) != 2000 || !utf8.ValidString(got) || !strings.HasSuffix(got, "…") {
		t.Errorf("truncate: %d runes, valid %v", utf8.RuneCountInString(got), utf8.ValidString(got))
	}
}
