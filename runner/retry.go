package runner

import (
	"fmt"
	"time"

	"github.com/eventline/eventline/projector"
)

// Defaults of Retry, the retry policy of a projection registered without WithRetry.
const (
	RetryAttemptsDefault   = 5
	RetryBackoffMinDefault = 100 * time.Millisecond
	RetryBackoffMaxDefault = 10 * time.Second
)

// Retry is how often, and how far apart, an event whose handler fails with a transient error is
// tried before the failure policy (Stop or DeadLetter) applies to it (docs/design.md, "Failures
// and timeouts"). An error is transient when the handler marks it with projector.Transient; for a
// detached handler, network errors (connection refused, reset, timeouts) are transient too. Other
// handler errors apply the policy at the first failure: handling the event again would fail the
// same way.
//
// While an event is retried its unit waits before it: the unit does not move past it (so an
// aggregate's events stay in order), other units and projections go on. The wait ends at once
// when the runner stops. The count of attempts is kept in memory: after a restart or a change of
// owner, the event gets its attempts again.
type Retry struct {
	// Attempts is how many times the event is handed to the handler, in all, before the policy
	// applies; 1 turns retries off. Defaults to 5.
	Attempts int
	// Min is the wait before the second attempt; each later wait doubles, up to Max. Defaults to
	// 100ms and 10s.
	Min, Max time.Duration
}

// WithRetry sets the retry policy of transient handler errors (see Retry). Zero fields take their
// defaults.
func WithRetry(r Retry) Option {
	return func(o *options) { o.retry = r }
}

func (r Retry) withDefaults() Retry {
	if r.Attempts == 0 {
		r.Attempts = RetryAttemptsDefault
	}
	if r.Min == 0 {
		r.Min = RetryBackoffMinDefault
	}
	if r.Max == 0 {
		r.Max = max(r.Min, RetryBackoffMaxDefault)
	}
	return r
}

func (r Retry) validate() error {
	switch {
	case r.Attempts < 1:
		return fmt.Errorf("retry: invalid Attempts %d (want 1 or more)", r.Attempts)
	case r.Min < 0:
		return fmt.Errorf("retry: invalid Min %s", r.Min)
	case r.Max < r.Min:
		return fmt.Errorf("retry: invalid Max %s (below Min %s)", r.Max, r.Min)
	}
	return nil
}

// delay is the wait after the failed attempt number failed (1 for the first).
func (r Retry) delay(failed int) time.Duration {
	d := r.Min
	for i := 1; i < failed && d < r.Max; i++ {
		d *= 2
	}
	return min(d, r.Max)
}

// retryState counts the failed attempts at the event a unit is retrying.
type retryState struct {
	pos      int64 // 0: none
	attempts int
}

// retryLater is returned by a unit's step when a transient handler failure is to be tried again
// after delay: the unit's loop waits for it.
type retryLater struct {
	err      error
	pos      int64
	attempt  int // the attempt that failed
	attempts int // of Retry.Attempts
	delay    time.Duration
}

func (e *retryLater) Error() string {
	return fmt.Sprintf("event %d failed (attempt %d of %d), retrying after %s: %v", e.pos, e.attempt, e.attempts, e.delay, e.err)
}

func (e *retryLater) Unwrap() error { return e.err }

// retryable reports whether a handler error is worth handling the event again later: it is
// marked transient, or, for a detached handler (outside the runner's database), it is a
// transient network or database error.
func retryable(err error, detached bool) bool {
	return projector.IsTransient(err) || (detached && isTransient(err))
}
