package openclaw

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// This file locates values in JSON5 source text, so that a merge can edit
// the file in place: only the values that change are rewritten, and every
// other byte (comments, key order, quoting, trailing commas) stays as it
// was. Values themselves are decoded by the json5 library (config.go);
// the result of an edit is decoded again and compared with the intended
// document, and a mismatch falls back to rewriting the file as JSON.

// textNode is a value's place in the source.
type textNode struct {
	kind       byte // 'o' object, 'a' array, 's' scalar (string, number, literal)
	start, end int  // the value's bytes: [start, end)
	members    []textMember
	elems      []*textNode
}

type textMember struct {
	key      string
	keyStart int
	bareKey  bool
	value    *textNode
}

type json5Scanner struct {
	src      []byte
	pos      int
	comments bool
}

var errJSON5Syntax = errors.New("JSON5 syntax")

// parseJSON5Text parses the document's structure.
func parseJSON5Text(src []byte) (*textNode, bool, error) {
	s := &json5Scanner{src: src}
	s.skip()
	n, err := s.value()
	if err != nil {
		return nil, s.comments, err
	}
	s.skip()
	if s.pos != len(src) {
		return nil, s.comments, fmt.Errorf("%w: unexpected text at byte %d", errJSON5Syntax, s.pos)
	}
	return n, s.comments, nil
}

// hasJSON5Comments reports whether the text has // or /* */ comments.
func hasJSON5Comments(src []byte) bool {
	_, comments, _ := parseJSON5Text(src)
	return comments
}

// skip passes white space (JSON5 allows all of Unicode's) and comments.
func (s *json5Scanner) skip() {
	for s.pos < len(s.src) {
		c := s.src[s.pos]
		switch {
		case c == '/' && s.pos+1 < len(s.src) && s.src[s.pos+1] == '/':
			s.comments = true
			for s.pos < len(s.src) && s.src[s.pos] != '\n' && s.src[s.pos] != '\r' {
				s.pos++
			}
		case c == '/' && s.pos+1 < len(s.src) && s.src[s.pos+1] == '*':
			s.comments = true
			end := bytes.Index(s.src[s.pos+2:], []byte("*/"))
			if end < 0 {
				s.pos = len(s.src)
				return
			}
			s.pos += 2 + end + 2
		case c < utf8.RuneSelf:
			if c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\v' && c != '\f' {
				return
			}
			s.pos++
		default:
			r, size := utf8.DecodeRune(s.src[s.pos:])
			if !unicode.IsSpace(r) && r != '\uFEFF' {
				return
			}
			s.pos += size
		}
	}
}

func (s *json5Scanner) value() (*textNode, error) {
	if s.pos >= len(s.src) {
		return nil, fmt.Errorf("%w: unexpected end", errJSON5Syntax)
	}
	switch c := s.src[s.pos]; c {
	case '{':
		return s.object()
	case '[':
		return s.array()
	case '"', '\'':
		start := s.pos
		if _, err := s.str(); err != nil {
			return nil, err
		}
		return &textNode{kind: 's', start: start, end: s.pos}, nil
	default:
		start := s.pos
		for s.pos < len(s.src) {
			c := s.src[s.pos]
			if c == ',' || c == '}' || c == ']' || c == ':' || c == '/' || c == ' ' || c == '\t' || c == '\n' || c == '\r' {
				break
			}
			s.pos++
		}
		if s.pos == start {
			return nil, fmt.Errorf("%w: unexpected %q at byte %d", errJSON5Syntax, c, s.pos)
		}
		return &textNode{kind: 's', start: start, end: s.pos}, nil
	}
}

func (s *json5Scanner) object() (*textNode, error) {
	n := &textNode{kind: 'o', start: s.pos}
	s.pos++ // {
	for {
		s.skip()
		if s.pos >= len(s.src) {
			return nil, fmt.Errorf("%w: unterminated object", errJSON5Syntax)
		}
		if s.src[s.pos] == '}' {
			s.pos++
			n.end = s.pos
			return n, nil
		}
		m := textMember{keyStart: s.pos}
		if c := s.src[s.pos]; c == '"' || c == '\'' {
			k, err := s.str()
			if err != nil {
				return nil, err
			}
			m.key = k
		} else {
			start := s.pos
			for s.pos < len(s.src) {
				c := s.src[s.pos]
				if c == ':' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '/' {
					break
				}
				s.pos++
			}
			if s.pos == start {
				return nil, fmt.Errorf("%w: expected a key at byte %d", errJSON5Syntax, s.pos)
			}
			k, err := unescapeIdentifier(string(s.src[start:s.pos]))
			if err != nil {
				return nil, err
			}
			m.key, m.bareKey = k, true
		}
		s.skip()
		if s.pos >= len(s.src) || s.src[s.pos] != ':' {
			return nil, fmt.Errorf("%w: expected ':' at byte %d", errJSON5Syntax, s.pos)
		}
		s.pos++
		s.skip()
		v, err := s.value()
		if err != nil {
			return nil, err
		}
		m.value = v
		n.members = append(n.members, m)
		s.skip()
		if s.pos < len(s.src) && s.src[s.pos] == ',' {
			s.pos++
			continue
		}
		if s.pos < len(s.src) && s.src[s.pos] == '}' {
			continue
		}
		return nil, fmt.Errorf("%w: expected ',' or '}' at byte %d", errJSON5Syntax, s.pos)
	}
}

func (s *json5Scanner) array() (*textNode, error) {
	n := &textNode{kind: 'a', start: s.pos}
	s.pos++ // [
	for {
		s.skip()
		if s.pos >= len(s.src) {
			return nil, fmt.Errorf("%w: unterminated array", errJSON5Syntax)
		}
		if s.src[s.pos] == ']' {
			s.pos++
			n.end = s.pos
			return n, nil
		}
		v, err := s.value()
		if err != nil {
			return nil, err
		}
		n.elems = append(n.elems, v)
		s.skip()
		if s.pos < len(s.src) && s.src[s.pos] == ',' {
			s.pos++
			continue
		}
		if s.pos < len(s.src) && s.src[s.pos] == ']' {
			continue
		}
		return nil, fmt.Errorf("%w: expected ',' or ']' at byte %d", errJSON5Syntax, s.pos)
	}
}

// str reads a quoted string and returns its value.
func (s *json5Scanner) str() (string, error) {
	q := s.src[s.pos]
	s.pos++
	var b strings.Builder
	for s.pos < len(s.src) {
		c := s.src[s.pos]
		switch {
		case c == q:
			s.pos++
			return b.String(), nil
		case c == '\\':
			if s.pos+1 >= len(s.src) {
				return "", fmt.Errorf("%w: unterminated string", errJSON5Syntax)
			}
			e := s.src[s.pos+1]
			s.pos += 2
			switch e {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'v':
				b.WriteByte('\v')
			case '0':
				b.WriteByte(0)
			case '\n': // line continuation
			case '\r':
				if s.pos < len(s.src) && s.src[s.pos] == '\n' {
					s.pos++
				}
			case 'x', 'u':
				width := 2
				if e == 'u' {
					width = 4
				}
				if s.pos+width > len(s.src) {
					return "", fmt.Errorf("%w: bad escape", errJSON5Syntax)
				}
				v, err := strconv.ParseUint(string(s.src[s.pos:s.pos+width]), 16, 32)
				if err != nil {
					return "", fmt.Errorf("%w: bad escape", errJSON5Syntax)
				}
				s.pos += width
				b.WriteRune(rune(v))
			default:
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
			s.pos++
		}
	}
	return "", fmt.Errorf("%w: unterminated string", errJSON5Syntax)
}

// unescapeIdentifier decodes \uXXXX escapes in an unquoted key.
func unescapeIdentifier(k string) (string, error) {
	if !strings.Contains(k, `\`) {
		return k, nil
	}
	s := &json5Scanner{src: []byte(`"` + k + `"`)}
	return s.str()
}

// lookup returns the member of an object node with the key, or nil.
func (n *textNode) lookup(key string) *textMember {
	if n == nil || n.kind != 'o' {
		return nil
	}
	for i := len(n.members) - 1; i >= 0; i-- { // the last duplicate wins, as when decoding
		if n.members[i].key == key {
			return &n.members[i]
		}
	}
	return nil
}

// orderedKeys returns m's keys in the order the object at path has them in
// the text (keys the text lacks, or all of them if it cannot be read, come
// sorted at the end).
func orderedKeys(src []byte, path []string, m map[string]any) []string {
	var out []string
	seen := map[string]bool{}
	if root, _, err := parseJSON5Text(src); err == nil {
		n := root
		for _, p := range path {
			if mem := n.lookup(p); mem != nil {
				n = mem.value
			} else {
				n = nil
				break
			}
		}
		if n != nil && n.kind == 'o' {
			for _, mem := range n.members {
				if _, ok := m[mem.key]; ok && !seen[mem.key] {
					out = append(out, mem.key)
					seen[mem.key] = true
				}
			}
		}
	}
	var rest []string
	for k := range m {
		if !seen[k] {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	return append(out, rest...)
}

// textEdit replaces src[start:end] with text.
type textEdit struct {
	start, end int
	text       string
}

// editor computes in-place edits that turn the old document into the new.
type editor struct {
	src      []byte
	unit     string // one level of indentation
	bareKeys bool   // the file writes identifier keys without quotes
	edits    []textEdit
}

// editJSON5 returns src changed so that it decodes to newDoc, touching
// only the values that differ from oldDoc (which src decodes to).
func editJSON5(src []byte, oldDoc, newDoc map[string]any) ([]byte, error) {
	root, _, err := parseJSON5Text(src)
	if err != nil {
		return nil, err
	}
	if root.kind != 'o' {
		return nil, fmt.Errorf("the top level is not an object")
	}
	e := &editor{src: src, unit: "  "}
	e.detectStyle(root)
	if err := e.object(root, oldDoc, newDoc, ""); err != nil {
		return nil, err
	}
	sort.Slice(e.edits, func(i, j int) bool { return e.edits[i].start < e.edits[j].start })
	var out bytes.Buffer
	last := 0
	for _, ed := range e.edits {
		if ed.start < last {
			return nil, fmt.Errorf("overlapping edits")
		}
		out.Write(src[last:ed.start])
		out.WriteString(ed.text)
		last = ed.end
	}
	out.Write(src[last:])
	return out.Bytes(), nil
}

// detectStyle reads the indentation unit and key quoting from the root.
func (e *editor) detectStyle(root *textNode) {
	for _, m := range root.members {
		if m.bareKey {
			e.bareKeys = true
		}
		if ind := e.indentAt(m.keyStart); ind != "" && e.unit == "  " {
			e.unit = ind
		}
	}
}

// indentAt is the white space between the start of pos's line and pos ("" if
// other text precedes pos on its line).
func (e *editor) indentAt(pos int) string {
	ls := bytes.LastIndexByte(e.src[:pos], '\n') + 1
	ind := e.src[ls:pos]
	if len(bytes.TrimLeft(ind, " \t")) != 0 {
		return ""
	}
	return string(ind)
}

// multiline reports whether a container spans lines with its closing
// bracket alone at the start of its line.
func (e *editor) multiline(n *textNode) bool {
	closePos := n.end - 1
	return bytes.IndexByte(e.src[n.start:n.end], '\n') >= 0 && e.indentAtOK(closePos)
}

func (e *editor) indentAtOK(pos int) bool {
	ls := bytes.LastIndexByte(e.src[:pos], '\n') + 1
	return len(bytes.TrimLeft(e.src[ls:pos], " \t")) == 0
}

// lineIndent is the leading white space of pos's line.
func (e *editor) lineIndent(pos int) string {
	ls := e.lineStart(pos)
	i := ls
	for i < len(e.src) && (e.src[i] == ' ' || e.src[i] == '\t') {
		i++
	}
	return string(e.src[ls:i])
}

// lineStart is the offset of the start of pos's line.
func (e *editor) lineStart(pos int) int { return bytes.LastIndexByte(e.src[:pos], '\n') + 1 }

// hasCommaAfter reports whether a ',' follows end (past spaces and comments).
func (e *editor) hasCommaAfter(end int) bool {
	s := &json5Scanner{src: e.src, pos: end}
	s.skip()
	return s.pos < len(e.src) && e.src[s.pos] == ','
}

func (e *editor) object(n *textNode, oldM, newM map[string]any, indent string) error {
	for k := range oldM {
		if _, ok := newM[k]; !ok {
			return fmt.Errorf("removing %q is not supported", k)
		}
	}
	var added []string
	for _, k := range keysInOrder(newM) {
		if _, had := oldM[k]; !had {
			added = append(added, k)
		}
	}
	if len(added) > 0 && (!e.multiline(n) || len(n.members) == 0) {
		// A one-line or empty object: write it anew.
		return e.replace(n, newM, indent)
	}
	for _, k := range keysInOrder(newM) {
		nv := newM[k]
		ov, had := oldM[k]
		if !had || equalJSON(ov, nv) {
			continue
		}
		mem := n.lookup(k)
		if mem == nil {
			return fmt.Errorf("key %q not found in the text", k)
		}
		if err := e.value(mem.value, ov, nv, e.lineIndent(mem.keyStart)); err != nil {
			return err
		}
	}
	if len(added) == 0 {
		return nil
	}
	memberIndent := e.indentAt(n.members[0].keyStart)
	if memberIndent == "" {
		memberIndent = indent + e.unit
	}
	last := n.members[len(n.members)-1].value
	if !e.hasCommaAfter(last.end) {
		e.edits = append(e.edits, textEdit{last.end, last.end, ","})
	}
	var b strings.Builder
	for i, k := range added {
		b.WriteString(memberIndent)
		b.WriteString(e.key(k))
		b.WriteString(": ")
		b.WriteString(e.render(newM[k], memberIndent))
		if i < len(added)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	at := e.lineStart(n.end - 1)
	e.edits = append(e.edits, textEdit{at, at, b.String()})
	return nil
}

// value edits one changed value in place.
func (e *editor) value(n *textNode, ov, nv any, indent string) error {
	om, oIsMap := ov.(map[string]any)
	nm, nIsMap := nv.(map[string]any)
	if oIsMap && nIsMap && n.kind == 'o' {
		return e.object(n, om, nm, indent)
	}
	oa, oIsArr := ov.([]any)
	na, nIsArr := nv.([]any)
	if oIsArr && nIsArr && n.kind == 'a' && len(na) > len(oa) && equalJSON(oa, na[:len(oa)]) && len(n.elems) == len(oa) && len(oa) > 0 && e.multiline(n) {
		elemIndent := e.lineIndent(n.elems[0].start)
		if e.lineStart(n.elems[0].start) <= n.start { // the first element shares the '[' line
			elemIndent = indent + e.unit
		}
		last := n.elems[len(n.elems)-1]
		if !e.hasCommaAfter(last.end) {
			e.edits = append(e.edits, textEdit{last.end, last.end, ","})
		}
		var b strings.Builder
		for i, el := range na[len(oa):] {
			b.WriteString(elemIndent)
			b.WriteString(e.render(el, elemIndent))
			if i < len(na)-len(oa)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		at := e.lineStart(n.end - 1)
		e.edits = append(e.edits, textEdit{at, at, b.String()})
		return nil
	}
	return e.replace(n, nv, indent)
}

// replace rewrites a whole value.
func (e *editor) replace(n *textNode, v any, indent string) error {
	e.edits = append(e.edits, textEdit{n.start, n.end, e.render(v, indent)})
	return nil
}

var identRE = func(k string) bool {
	if k == "" {
		return false
	}
	for i, r := range k {
		if !(r == '_' || r == '$' || unicode.IsLetter(r) || (i > 0 && unicode.IsDigit(r))) {
			return false
		}
	}
	return true
}

// key writes a key in the file's style.
func (e *editor) key(k string) string {
	if e.bareKeys && identRE(k) {
		return k
	}
	b, _ := json.Marshal(k)
	return string(b)
}

// render writes a value; nested lines are indented from indent.
func (e *editor) render(v any, indent string) string {
	switch x := v.(type) {
	case map[string]any:
		if len(x) == 0 {
			return "{}"
		}
		keys := keysInOrder(x)
		if inline, ok := e.inlineObject(x, keys); ok && len(indent)+len(inline) <= 80 {
			return inline
		}
		var b strings.Builder
		b.WriteString("{\n")
		for i, k := range keys {
			b.WriteString(indent + e.unit)
			b.WriteString(e.key(k))
			b.WriteString(": ")
			b.WriteString(e.render(x[k], indent+e.unit))
			if i < len(keys)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + "}")
		return b.String()
	case []any:
		if len(x) == 0 {
			return "[]"
		}
		scalars := true
		for _, el := range x {
			switch el.(type) {
			case map[string]any, []any:
				scalars = false
			}
		}
		if scalars {
			parts := make([]string, len(x))
			for i, el := range x {
				parts[i] = e.render(el, indent)
			}
			if one := "[" + strings.Join(parts, ", ") + "]"; len(one) <= 80 {
				return one
			}
		}
		var b strings.Builder
		b.WriteString("[\n")
		for i, el := range x {
			b.WriteString(indent + e.unit)
			b.WriteString(e.render(el, indent+e.unit))
			if i < len(x)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + "]")
		return b.String()
	default:
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			return "null"
		}
		return strings.TrimSuffix(buf.String(), "\n")
	}
}

// inlineObject writes a small object of scalars on one line.
func (e *editor) inlineObject(m map[string]any, keys []string) (string, bool) {
	if len(keys) > 3 {
		return "", false
	}
	parts := make([]string, len(keys))
	for i, k := range keys {
		switch m[k].(type) {
		case map[string]any, []any:
			return "", false
		}
		parts[i] = e.key(k) + ": " + e.render(m[k], "")
	}
	return "{ " + strings.Join(parts, ", ") + " }", true
}

// keyOrder lists keys that come first, in this order, when AgentSpace
// writes an object of its own (the rest follow sorted).
var keyOrder = []string{"agentId", "comment", "match", "channel", "accountId", "peer", "kind", "id",
	"enabled", "name", "homeserver", "userId", "accessToken", "deviceId", "deviceName", "network",
	"autoJoin", "autoJoinAllowlist", "groupPolicy", "groups", "requireMention", "allowBots"}

// keysInOrder orders an object's keys for writing.
func keysInOrder(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := slices.Index(keyOrder, keys[i]), slices.Index(keyOrder, keys[j])
		switch {
		case a >= 0 && b >= 0:
			return a < b
		case a >= 0:
			return true
		case b >= 0:
			return false
		}
		return keys[i] < keys[j]
	})
	return keys
}

// equalJSON compares two generic JSON values by their canonical encoding.
func equalJSON(a, b any) bool {
	if reflect.DeepEqual(a, b) {
		return true
	}
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}
