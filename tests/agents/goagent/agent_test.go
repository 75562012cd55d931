package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseInstanceUID(t *testing.T) {
	hexUID := "0192a3b4c5d6e7f8091a2b3c4d5e6f70"
	for _, text := range []string{hexUID, "0192a3b4-c5d6-e7f8-091a-2b3c4d5e6f70"} {
		uid, err := parseInstanceUID(text)
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if got := strings.ReplaceAll(uid.String(), "-", ""); got != hexUID {
			t.Errorf("%q parsed to %s", text, got)
		}
	}
	if _, err := parseInstanceUID("0192a3b4"); err == nil {
		t.Error("a 4-byte UID was accepted")
	}
	a, _ := parseInstanceUID("")
	b, _ := parseInstanceUID("")
	if a == b || a.Version() != 7 {
		t.Errorf("default UIDs %s, %s: want distinct UUIDv7", a, b)
	}
}

func TestParseConfig(t *testing.T) {
	cfg, err := parseConfig([]string{
		"--url", "http://127.0.0.1:1/v1/opamp", "--id-attr", "k8s.pod.uid=u1",
		"--attr", "a=b=c", "--attr", "x=", "--heartbeat", "250ms",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Transport != "http" || cfg.Heartbeat != 250*time.Millisecond {
		t.Errorf("transport=%s heartbeat=%s", cfg.Transport, cfg.Heartbeat)
	}
	want := []keyValue{{"a", "b=c"}, {"x", ""}}
	if len(cfg.Attrs) != 2 || cfg.Attrs[0] != want[0] || cfg.Attrs[1] != want[1] {
		t.Errorf("attrs = %v", cfg.Attrs)
	}
	bad := [][]string{
		{},                   // no --url
		{"--url", "tcp://x"}, // unknown scheme
		{"--url", "http://x", "--heartbeat", "0s"}, // HTTP needs a polling interval
		{"--url", "ws://x", "--http-disconnect"},
		{"--url", "ws://x", "--attr", "novalue"},
		{"--url", "ws://x", "--available-component", "receivers"}, // no name
	}
	for _, args := range bad {
		if _, err := parseConfig(args, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestAvailableComponentsByKindWithAnOrderFreeHash(t *testing.T) {
	a := availableComponents([]string{"receivers/otlp", "exporters/debug", "receivers/prometheus"})
	b := availableComponents([]string{"receivers/prometheus", "receivers/otlp", "exporters/debug"})
	if !bytes.Equal(a.Hash, b.Hash) || len(a.Hash) != 32 {
		t.Errorf("hashes %x, %x: want one SHA-256 whatever the order", a.Hash, b.Hash)
	}
	if len(a.Components) != 2 || len(a.Components["receivers"].SubComponentMap) != 2 {
		t.Errorf("components = %v", a.Components)
	}
	other := availableComponents([]string{"receivers/otlp"})
	if bytes.Equal(a.Hash, other.Hash) {
		t.Error("another set has the same hash")
	}
}

func TestDescriptionMergesAttributes(t *testing.T) {
	cfg, err := parseConfig([]string{
		"--url", "ws://x", "--service-name", "svc", "--host-name", "h",
		"--id-attr", "service.name=override", "--id-attr", "k8s.pod.uid=u", "--attr", "host.name=h2",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	d := (&agent{cfg: cfg}).description()
	ident := map[string]string{}
	for _, kv := range d.GetIdentifyingAttributes() {
		ident[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	if ident["service.name"] != "override" || ident["k8s.pod.uid"] != "u" || len(ident) != 3 {
		t.Errorf("identifying = %v", ident)
	}
	non := d.GetNonIdentifyingAttributes()
	if len(non) != 1 || non[0].GetValue().GetStringValue() != "h2" {
		t.Errorf("non-identifying = %v", non)
	}
}

// blockingWriter holds every Write until released, then records it.
type blockingWriter struct {
	release chan struct{}
	out     *syncBuffer
}

func (w blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	return w.out.Write(p)
}

func TestEmitterNeverBlocksAndReportsDrops(t *testing.T) {
	w := blockingWriter{release: make(chan struct{}), out: &syncBuffer{}}
	e := newEmitter(w, 4)
	done := make(chan struct{})
	go func() {
		for range 1000 {
			e.Emit("x", nil)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Emit blocked on a stalled writer")
	}
	if e.Flush(50 * time.Millisecond) {
		t.Error("Flush reported success while the writer is stalled")
	}
	close(w.release)
	e.Emit("after", nil) // the drop marker is written before the next line
	e.Close(time.Second)
	var dropped float64
	for _, line := range strings.Split(strings.TrimSpace(w.out.buf.String()), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("bad line %q: %v", line, err)
		}
		if ev["event"] == "dropped" {
			dropped += ev["count"].(float64)
		}
	}
	if dropped < 900 {
		t.Errorf("dropped events reported = %v, want >= 900 of 1000 with a queue of 4", dropped)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func TestEmitterWritesJSONLines(t *testing.T) {
	var b syncBuffer
	e := newEmitter(&b, 16)
	e.Emit("connected", map[string]any{"transport": "ws"})
	if !e.Flush(time.Second) {
		t.Fatal("Flush failed")
	}
	e.Close(time.Second)
	var got map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(b.buf.Bytes()), &got); err != nil {
		t.Fatal(err)
	}
	if got["event"] != "connected" || got["transport"] != "ws" || got["ts"] == nil {
		t.Errorf("event = %v", got)
	}
}
