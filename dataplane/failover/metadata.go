package failover

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// The request metadata keys a router adds to a failed-over stream (as in
// src/voxmesh/rpc/metadata.py; a client never sets them).
const (
	// OffsetKey marks a failed-over LINEAR16 stream: its first audio byte is at
	// stream time N ms (the value, decimal), so every offset is shifted by N.
	OffsetKey = "voxmesh-offset-ms"
	// SkipKey marks a failed-over container stream, replayed from its start: the
	// first N ms of decoded audio were already recognised and are skipped.
	SkipKey = "voxmesh-skip-ms"
	// ContextKey carries a [ReplayContext] (JSON): the start of the replay that is
	// context only. Binary metadata, as its -bin suffix says.
	ContextKey = "voxmesh-context-bin"
)

// MaxContextFinals is the most finals a lead-in may name (a router keeps the latest).
const MaxContextFinals = 64

// PromptWords is the most words of earlier text a decode is prompted with: the text
// of the finals too old to be context.
const PromptWords = 40

// MetadataPair is one request metadata entry. A -bin key's Value holds raw bytes.
type MetadataPair struct {
	// Key is the metadata key, lower case.
	Key string
	// Value is the metadata value: text, or bytes for a -bin key.
	Value string
}

// Final is a final utterance in stream time, whole milliseconds.
type Final struct {
	// StartMs is where the utterance starts.
	StartMs int64
	// EndMs is where it ends.
	EndMs int64
	// Text is what was recognised.
	Text string
}

// ReplayContext is the start of a replay that is context only: the first LeadInMs
// of the replayed audio (which starts where [OffsetKey] says, or after what
// [SkipKey] discards) were already recognised, and Finals are the final utterances
// within it.
type ReplayContext struct {
	// LeadInMs is how long the lead-in is.
	LeadInMs int64
	// Finals are the final utterances within the lead-in, oldest first.
	Finals []Final
	// Prompt is the text of the stream's finals before the lead-in (their last
	// PromptWords words): the prompt the instance that failed decoded with.
	Prompt string
}

// Encode returns the metadata value: UTF-8 JSON, byte for byte what Python's
// json.dumps(body, ensure_ascii=False, separators=(",", ":")) makes of
// {"lead_in_ms": ..., "finals": [[start, end, text], ...], "prompt": ...} (the
// prompt only when not empty). Invalid UTF-8 in a text (which a Python str cannot
// hold) is written as U+FFFD.
func (c ReplayContext) Encode() []byte {
	b := make([]byte, 0, 64+32*len(c.Finals)+len(c.Prompt))
	b = append(b, `{"lead_in_ms":`...)
	b = strconv.AppendInt(b, c.LeadInMs, 10)
	b = append(b, `,"finals":[`...)
	for i, f := range c.Finals {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '[')
		b = strconv.AppendInt(b, f.StartMs, 10)
		b = append(b, ',')
		b = strconv.AppendInt(b, f.EndMs, 10)
		b = append(b, ',')
		b = appendJSONString(b, f.Text)
		b = append(b, ']')
	}
	b = append(b, ']')
	if c.Prompt != "" {
		b = append(b, `,"prompt":`...)
		b = appendJSONString(b, c.Prompt)
	}
	return append(b, '}')
}

// appendJSONString appends s as Python's json module writes a str with
// ensure_ascii=False: only '"', '\\' and the C0 controls are escaped, with the
// short escapes \b \f \n \r \t and \u00xx (lower-case hex) for the rest; '<', '>',
// '&', DEL, U+2028 and U+2029 stay as they are.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = utf8.AppendRune(b, utf8.RuneError)
			} else {
				b = append(b, s[i:i+size]...)
			}
			i += size
			continue
		}
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			if c < 0x20 {
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			} else {
				b = append(b, c)
			}
		}
		i++
	}
	return append(b, '"')
}

// ExtendPrompt returns prompt followed by texts (finals leaving the context, oldest
// first), cut to its last PromptWords words: the one shape of a decode's prompt.
// Words are split as Python's str.split() splits them: at Unicode whitespace,
// U+001C..U+001F included (strings.Fields leaves those out).
func ExtendPrompt(prompt string, texts []string) string {
	words := strings.FieldsFunc(strings.Join(append([]string{prompt}, texts...), " "), isPythonSpace)
	if len(words) > PromptWords {
		words = words[len(words)-PromptWords:]
	}
	return strings.Join(words, " ")
}

// isPythonSpace reports whether Python's str.isspace() is true of r: general
// category Zs or bidirectional class WS, B or S. That is unicode.IsSpace plus the
// separators U+001C..U+001F, which Go's White_Space leaves out.
func isPythonSpace(r rune) bool {
	switch {
	case r <= 0x20:
		return r == ' ' || (r >= '\t' && r <= '\r') || (r >= 0x1c && r <= 0x1f)
	case r < 0x85:
		return false
	case r <= 0xa0:
		return r == 0x85 || r == 0xa0
	case r < 0x1680:
		return false
	}
	switch r {
	case 0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000:
		return true
	}
	return r >= 0x2000 && r <= 0x200a
}
