package runner

// Test seams for subscriptions (used by package runner_test).

// WithStartedHookForTest calls f with the position a subscription starts after, once resolved.
func WithStartedHookForTest(f func(position int64)) SubscribeOption {
	return func(o *subscribeOptions) { o.started = f }
}

// WithHeldHookForTest calls f each time a subscription starts waiting at a position that is not
// settled yet.
func WithHeldHookForTest(f func(position int64)) SubscribeOption {
	return func(o *subscribeOptions) { o.held = f }
}

// HorizonForTest returns the horizon of the running tracker (0 before Run is up).
func (r *Runner) HorizonForTest() int64 {
	r.life.mu.Lock()
	defer r.life.mu.Unlock()
	if r.life.tracker == nil {
		return 0
	}
	return r.life.tracker.Horizon()
}
