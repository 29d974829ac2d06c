package failover

import (
	"testing"
	"unicode/utf8"
)

// pythonSpace is every code point Python 3.11's str.isspace() is true of.
var pythonSpace = []rune{
	0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680,
	0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a,
	0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
}

func TestWhitespaceIsPythons(t *testing.T) {
	want := map[rune]bool{}
	for _, r := range pythonSpace {
		want[r] = true
	}
	for r := rune(0); r <= utf8.MaxRune; r++ {
		if isPythonSpace(r) != want[r] {
			t.Errorf("isPythonSpace(%U) = %v, Python says %v", r, !want[r], want[r])
		}
	}
}

func TestExtendPromptSplitsAsPythonAndKeepsTheLastWords(t *testing.T) {
	for _, c := range []struct {
		prompt string
		texts  []string
		want   string // extend_prompt's answer in Python
	}{
		{"a\x1cb", []string{"c\u3000d\u00a0e", "f\u200bg h\u180ei", "j\u0085k\u2028l"},
			"a b c d e f\u200bg h\u180ei j k l"},
		{"w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20 w21 w22 " +
			"w23 w24 w25 w26 w27 w28 w29", []string{"v0 v1 v2 v3 v4 v5 v6 v7 v8 v9 v10 v11 v12 v13 v14"},
			"w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20 w21 w22 w23 w24 w25 w26 " +
				"w27 w28 w29 v0 v1 v2 v3 v4 v5 v6 v7 v8 v9 v10 v11 v12 v13 v14"},
		{"", nil, ""},
		{"  one  ", []string{"", " two\t"}, "one two"},
	} {
		if got := ExtendPrompt(c.prompt, c.texts); got != c.want {
			t.Errorf("ExtendPrompt(%q, %q) = %q, want %q", c.prompt, c.texts, got, c.want)
		}
	}
}

func TestEncodeIsPythonsJSON(t *testing.T) {
	for _, c := range []struct {
		context ReplayContext
		want    string // ReplayContext.encode() in Python
	}{
		{ReplayContext{LeadInMs: 3}, `{"lead_in_ms":3,"finals":[]}`},
		{
			ReplayContext{
				LeadInMs: 7,
				Finals:   []Final{{1, 2, "a\"b\\c\x7f\u2028\u2029<&>é😀"}, {3, 4, "\x01\b\f\n\r\t\x1f"}},
				Prompt:   "p q",
			},
			`{"lead_in_ms":7,"finals":[[1,2,"a\"b\\c` + "\x7f\u2028\u2029<&>é😀" +
				`"],[3,4,"\u0001\b\f\n\r\t\u001f"]],"prompt":"p q"}`,
		},
		// Not valid UTF-8 (a Python str cannot hold it): replaced, still valid JSON.
		{ReplayContext{Finals: []Final{{0, 0, "a\xffb"}}}, `{"lead_in_ms":0,"finals":[[0,0,"a` + "\ufffd" + `b"]]}`},
	} {
		if got := string(c.context.Encode()); got != c.want {
			t.Errorf("%+v encodes to\n%s\nwant\n%s", c.context, got, c.want)
		}
	}
}

func TestFloorDivIsPythons(t *testing.T) {
	for _, c := range [][3]int64{{-7, 10, -1}, {-7000, 3, -2334}, {7, -2, -4}, {7, 2, 3}, {-10, 5, -2}, {0, 3, 0}} {
		if got := floorDiv(c[0], c[1]); got != c[2] {
			t.Errorf("floorDiv(%d, %d) = %d, want %d", c[0], c[1], got, c[2])
		}
	}
}
