package postgres

import (
	"errors"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/eventline/eventline/eventstore"
)

// checkText returns why PostgreSQL cannot store s in a text column, or "": it must be UTF-8
// without NUL bytes.
func checkText(s string) string {
	switch {
	case strings.IndexByte(s, 0) >= 0:
		return "holds a NUL byte, which PostgreSQL cannot store in text"
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	}
	return ""
}

// timestamptz's range in PostgreSQL: 4713 BC to 294276 AD.
var (
	minCreatedAt = time.Date(-4712, time.January, 1, 0, 0, 0, 0, time.UTC)
	maxCreatedAt = time.Date(294277, time.January, 1, 0, 0, 0, 0, time.UTC)
)

// checkEvent returns why PostgreSQL would refuse ev (validated by eventstore.ValidateBatch), or "",
// and the size of its metadata as stored and read back: its jsonb text.
func checkEvent(ev *eventstore.Event) (why string, metadataSize int) {
	for _, f := range []struct{ name, value string }{
		{"aggregate type", ev.AggregateType}, {"aggregate ID", ev.AggregateID}, {"event type", ev.EventType},
		{"causation ID", ev.CausationID}, {"correlation ID", ev.CorrelationID}, {"trace ID", ev.TraceID},
	} {
		if why := checkText(f.value); why != "" {
			return f.name + " " + why, 0
		}
	}
	if ev.CreatedAt.Before(minCreatedAt) || !ev.CreatedAt.Before(maxCreatedAt) {
		return "creation time " + ev.CreatedAt.String() + " is outside PostgreSQL's range", 0
	}
	if len(ev.Metadata) == 0 {
		return "", 0
	}
	if !utf8.Valid(ev.Metadata) {
		return "metadata is not valid UTF-8", 0
	}
	size, err := jsonbTextSize(ev.Metadata)
	if err != nil {
		return "metadata " + err.Error(), 0
	}
	return "", size
}

// jsonbTextSize returns the length of the text of b (valid JSON in UTF-8) as jsonb, which is how
// PostgreSQL stores metadata and how readers get it back: white space dropped, ", " and ": " as
// separators, escapes decoded (jsonb keeps only those it needs), numbers as numeric prints them
// (1e5 is 100000). Keys that repeat in an object are counted although jsonb keeps one. It returns
// an error for what jsonb refuses: \u0000, unpaired surrogates, numbers beyond numeric's range.
func jsonbTextSize(b []byte) (int, error) {
	size := 0
	for i := 0; i < len(b); {
		switch c := b[i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == ',' || c == ':':
			size += 2
			i++
		case c == '"':
			n, next, err := jsonbStringSize(b, i)
			if err != nil {
				return 0, err
			}
			size, i = size+n, next
		case c == '-' || c >= '0' && c <= '9':
			n, next, err := jsonbNumberSize(b, i)
			if err != nil {
				return 0, err
			}
			size, i = size+n, next
		default: // brackets and the letters of true, false and null
			size++
			i++
		}
	}
	return size, nil
}

// jsonbStringSize returns the length of the string starting at b[i] (its opening quote) as jsonb
// prints it, and the index after its closing quote.
func jsonbStringSize(b []byte, i int) (int, int, error) {
	size := 2 // the quotes
	for j := i + 1; j < len(b); {
		c := b[j]
		switch {
		case c == '"':
			return size, j + 1, nil
		case c != '\\':
			size++ // a byte of a character jsonb prints as it is
			j++
			continue
		}
		if j+1 >= len(b) {
			break
		}
		esc := b[j+1]
		if esc != 'u' {
			if esc == '/' {
				size++ // printed as "/"
			} else {
				size += 2 // \" \\ \b \f \n \r \t stay two bytes
			}
			j += 2
			continue
		}
		r, ok := hex4(b, j+2)
		if !ok {
			break
		}
		j += 6
		switch {
		case r == 0:
			return 0, 0, errors.New(`holds \u0000, which jsonb cannot store`)
		case utf16.IsSurrogate(r):
			low, ok := rune(0), false
			if r < 0xdc00 && j+1 < len(b) && b[j] == '\\' && b[j+1] == 'u' {
				low, ok = hex4(b, j+2)
			}
			if !ok || low < 0xdc00 || low > 0xdfff {
				return 0, 0, errors.New("holds an unpaired UTF-16 surrogate, which jsonb cannot store")
			}
			j += 6
			size += utf8.RuneLen(utf16.DecodeRune(r, low))
		case r == '"' || r == '\\' || r == '\b' || r == '\f' || r == '\n' || r == '\r' || r == '\t':
			size += 2
		case r < 0x20:
			size += 6 // \u00XX
		default:
			size += utf8.RuneLen(r)
		}
	}
	return 0, 0, errors.New("is not valid JSON")
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// numeric's limits: 131072 digits before the decimal point, 16383 after.
const (
	numericIntDigitsMax = 131072
	numericScaleMax     = 16383
)

// jsonbNumberSize returns the length of the number starting at b[i] as numeric prints it (every
// digit, no exponent: 1.5e3 is 1500, 1e-2 is 0.01, -0 is 0), and the index after it.
func jsonbNumberSize(b []byte, i int) (int, int, error) {
	j := i
	neg := b[j] == '-'
	if neg {
		j++
	}
	digits := func() (start, end int) {
		start = j
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		return start, j
	}
	intStart, intEnd := digits()
	fracStart, fracEnd := j, j
	if j < len(b) && b[j] == '.' {
		j++
		fracStart, fracEnd = digits()
	}
	exp := 0
	if j < len(b) && (b[j] == 'e' || b[j] == 'E') {
		j++
		expNeg := false
		if j < len(b) && (b[j] == '+' || b[j] == '-') {
			expNeg = b[j] == '-'
			j++
		}
		start, end := digits()
		for start < end && b[start] == '0' {
			start++
		}
		if end-start > 9 {
			return 0, 0, errors.New("holds a number beyond the range of PostgreSQL's numeric")
		}
		for _, c := range b[start:end] {
			exp = exp*10 + int(c-'0')
		}
		if expNeg {
			exp = -exp
		}
	}
	intLen, fracLen := intEnd-intStart, fracEnd-fracStart
	scale := max(0, fracLen-exp)
	// The digits, without the point, and how many of them come before the point once the
	// exponent is applied; leading zeros are not printed.
	point := intLen + exp
	lead := leadingZeros(b[intStart:intEnd])
	if lead == intLen {
		lead += leadingZeros(b[fracStart:fracEnd])
	}
	zero := lead == intLen+fracLen
	if scale > numericScaleMax || !zero && point-lead > numericIntDigitsMax {
		return 0, 0, errors.New("holds a number beyond the range of PostgreSQL's numeric")
	}
	size := 1 // "0" when there is no integer digit
	if !zero {
		size = max(1, point-lead)
		if neg {
			size++
		}
	}
	if scale > 0 {
		size += 1 + scale
	}
	return size, j, nil
}

func leadingZeros(digits []byte) int {
	n := 0
	for n < len(digits) && digits[n] == '0' {
		n++
	}
	return n
}
