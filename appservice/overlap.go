package appservice

import (
	"regexp/syntax"
	"strings"
)

func parseSyntax(expr string) (*syntax.Regexp, error) {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return nil, err
	}
	return re.Simplify(), nil
}

// writeExample appends a string matched by re; repetitions with no minimum
// are filled with fill (when fill is allowed there) so that "@bot_.*" yields
// "@bot_a" as well as "@bot_".
func writeExample(b *strings.Builder, re *syntax.Regexp, fill string) error {
	switch re.Op {
	case syntax.OpNoMatch:
		return errNoExample
	case syntax.OpEmptyMatch, syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText,
		syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return nil
	case syntax.OpLiteral:
		b.WriteString(string(re.Rune))
		return nil
	case syntax.OpCharClass:
		if len(re.Rune) == 0 {
			return errNoExample
		}
		b.WriteRune(classExample(re.Rune))
		return nil
	case syntax.OpAnyCharNotNL, syntax.OpAnyChar:
		b.WriteString("a")
		return nil
	case syntax.OpCapture:
		return writeExample(b, re.Sub[0], fill)
	case syntax.OpStar, syntax.OpQuest:
		if fill != "" && fitsRepeat(re.Sub[0], fill) {
			b.WriteString(fill)
		}
		return nil
	case syntax.OpPlus:
		if fill != "" && fitsRepeat(re.Sub[0], fill) {
			b.WriteString(fill)
			return nil
		}
		return writeExample(b, re.Sub[0], fill)
	case syntax.OpRepeat:
		for i := 0; i < re.Min; i++ {
			if err := writeExample(b, re.Sub[0], fill); err != nil {
				return err
			}
		}
		return nil
	case syntax.OpConcat:
		for _, sub := range re.Sub {
			if err := writeExample(b, sub, fill); err != nil {
				return err
			}
		}
		return nil
	case syntax.OpAlternate:
		var lastErr error = errNoExample
		for _, sub := range re.Sub {
			var sb strings.Builder
			if err := writeExample(&sb, sub, fill); err != nil {
				lastErr = err
				continue
			}
			b.WriteString(sb.String())
			return nil
		}
		return lastErr
	}
	return errNoExample
}

// fitsRepeat reports whether every rune of fill matches the repeated
// sub-expression when it is a single character (".", "[a-z]", "\d" ...).
func fitsRepeat(sub *syntax.Regexp, fill string) bool {
	for _, r := range fill {
		if !singleRuneMatches(sub, r) {
			return false
		}
	}
	return true
}

func singleRuneMatches(re *syntax.Regexp, r rune) bool {
	switch re.Op {
	case syntax.OpAnyChar:
		return true
	case syntax.OpAnyCharNotNL:
		return r != '\n'
	case syntax.OpLiteral:
		return len(re.Rune) == 1 && re.Rune[0] == r
	case syntax.OpCharClass:
		for i := 0; i+1 < len(re.Rune); i += 2 {
			if r >= re.Rune[i] && r <= re.Rune[i+1] {
				return true
			}
		}
	case syntax.OpCapture:
		return singleRuneMatches(re.Sub[0], r)
	}
	return false
}

// classExample picks a readable rune from a character class (ranges come in
// pairs): a lowercase letter or digit when the class allows one.
func classExample(ranges []rune) rune {
	for _, want := range []rune{'a', 'x', '1', '_'} {
		for i := 0; i+1 < len(ranges); i += 2 {
			if want >= ranges[i] && want <= ranges[i+1] {
				return want
			}
		}
	}
	return ranges[0]
}
