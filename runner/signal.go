package runner

import "sync"

// broadcast wakes every waiter at once: C returns a channel that the next Signal closes.
type broadcast struct {
	mu  sync.Mutex
	ch  chan struct{}
	gen uint64
}

func newBroadcast() *broadcast { return &broadcast{ch: make(chan struct{})} }

// C returns the channel the next Signal closes, and the current generation.
func (b *broadcast) C() (<-chan struct{}, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch, b.gen
}

func (b *broadcast) Signal() {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.ch)
	b.ch = make(chan struct{})
	b.gen++
}
