package main

import (
	"encoding/json"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// emitter writes JSON lines without ever blocking the caller: lines go through
// a bounded queue; when it is full (nobody reads stdout) lines are dropped and
// counted, and a {"event":"dropped","count":N} line marks the gap. Server
// callbacks must never wait on a benchmark harness reading our stdout.
type emitter struct {
	w       io.Writer
	queue   chan []byte
	dropped atomic.Uint64
	done    chan struct{}

	mu     sync.RWMutex
	closed bool
}

func newEmitter(w io.Writer, capacity int) *emitter {
	e := &emitter{w: w, queue: make(chan []byte, capacity), done: make(chan struct{})}
	go func() {
		defer close(e.done)
		for line := range e.queue {
			if n := e.dropped.Swap(0); n > 0 {
				_, _ = e.w.Write(encodeEvent("dropped", map[string]any{"count": n}))
			}
			_, _ = e.w.Write(line)
		}
	}()
	return e
}

func (e *emitter) Emit(event string, fields map[string]any) {
	line := encodeEvent(event, fields)
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return
	}
	select {
	case e.queue <- line:
	default:
		e.dropped.Add(1)
	}
}

func (e *emitter) Close(timeout time.Duration) {
	e.mu.Lock()
	if !e.closed {
		e.closed = true
		close(e.queue)
	}
	e.mu.Unlock()
	select {
	case <-e.done:
	case <-time.After(timeout):
	}
}

func encodeEvent(event string, fields map[string]any) []byte {
	obj := make(map[string]any, len(fields)+2)
	for k, v := range fields {
		obj[k] = v
	}
	obj["event"] = event
	obj["ts"] = time.Now().UTC().Format(time.RFC3339Nano)
	line, err := json.Marshal(obj)
	if err != nil {
		line, _ = json.Marshal(map[string]any{"event": "encode_error", "error": err.Error(), "of": event})
	}
	return append(line, '\n')
}
