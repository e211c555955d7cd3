package projector

import "errors"

// TransientError marks a handler error as transient: the cause (a downstream service that is
// briefly down, a 503, a rate limit) may go away if the event is handled again a little later.
// The runner then tries the event again, with a backoff, up to the attempts of its retry policy
// (runner.WithRetry) before the failure policy applies. Errors not marked transient apply the
// failure policy at once, since handling the event again would fail the same way. Create one
// with Transient; find one with errors.As or IsTransient.
type TransientError struct {
	Err error
}

func (e *TransientError) Error() string { return "transient: " + e.Err.Error() }
func (e *TransientError) Unwrap() error { return e.Err }

// Transient marks err as transient (see TransientError). It returns nil for a nil err.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return &TransientError{Err: err}
}

// IsTransient reports whether err, or an error it wraps, was marked with Transient.
func IsTransient(err error) bool {
	var te *TransientError
	return errors.As(err, &te)
}
