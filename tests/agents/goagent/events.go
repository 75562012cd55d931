package main

import (
	"encoding/json"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// emitter writes one JSON object per line. Callers never block on the
// writer: lines go through a bounded queue drained by one goroutine, and when
// the queue is full the line is dropped and counted. The next line written
// after a drop is preceded by {"event":"dropped","count":N}, so a reader can
// tell that the stream has a gap. This matters because a test harness that
// stops reading stdout must never be able to stall the OpAMP client callbacks.
type emitter struct {
	w       io.Writer
	queue   chan emitItem
	dropped atomic.Uint64
	done    chan struct{}

	mu     sync.RWMutex // guards closed against a send on a closed queue
	closed bool
}

type emitItem struct {
	line []byte
	ack  chan struct{} // non-nil for a flush barrier
}

func newEmitter(w io.Writer, capacity int) *emitter {
	e := &emitter{w: w, queue: make(chan emitItem, capacity), done: make(chan struct{})}
	go e.loop()
	return e
}

func (e *emitter) loop() {
	defer close(e.done)
	for item := range e.queue {
		if n := e.dropped.Swap(0); n > 0 {
			e.write(encodeEvent("dropped", map[string]any{"count": n}))
		}
		if item.ack != nil {
			close(item.ack)
			continue
		}
		e.write(item.line)
	}
}

func (e *emitter) write(line []byte) {
	// A failed write (closed pipe) is ignored on purpose: the agent keeps
	// running so the server-side behaviour under test does not change.
	_, _ = e.w.Write(line)
}

// Emit queues one event; it never blocks.
func (e *emitter) Emit(event string, fields map[string]any) {
	line := encodeEvent(event, fields)
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return
	}
	select {
	case e.queue <- emitItem{line: line}:
	default:
		e.dropped.Add(1)
	}
}

// Flush waits until every line queued before the call is written, or until
// timeout. Used before the process freezes itself or exits.
func (e *emitter) Flush(timeout time.Duration) bool {
	ack := make(chan struct{})
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	e.mu.RLock()
	if e.closed {
		e.mu.RUnlock()
		return false
	}
	select {
	case e.queue <- emitItem{ack: ack}:
		e.mu.RUnlock()
	case <-timer.C:
		e.mu.RUnlock()
		return false
	}
	select {
	case <-ack:
		return true
	case <-timer.C:
		return false
	}
}

// Close stops accepting events and waits (up to timeout) for the queue to drain.
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
