package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// These tests run the real test agent (tests/agents/goagent, built with the
// go tool) against this peer on loopback, over both transports.

const agentUID = "0192a3b4c5d6e7f8091a2b3c4d5e6f70"

var (
	agentOnce sync.Once
	agentBin  string
	agentErr  error
	agentDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if agentDir != "" {
		_ = os.RemoveAll(agentDir)
	}
	os.Exit(code)
}

func buildAgent(t *testing.T) string {
	t.Helper()
	src := filepath.Join("..", "..", "tests", "agents", "goagent")
	if _, err := os.Stat(filepath.Join(src, "go.mod")); err != nil {
		t.Skipf("test agent sources not found at %s: %v", src, err)
	}
	agentOnce.Do(func() {
		agentDir, agentErr = os.MkdirTemp("", "opamp-goagent-test-")
		if agentErr != nil {
			return
		}
		agentBin = filepath.Join(agentDir, "opamp-goagent")
		cmd := exec.Command("go", "build", "-o", agentBin, ".")
		cmd.Dir = src
		if out, err := cmd.CombinedOutput(); err != nil {
			agentErr = errors.New("go build: " + err.Error() + "\n" + string(out))
		}
	})
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	return agentBin
}

func startPeer(t *testing.T, opts peerOptions) (*peer, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	out := newEmitter(io.Discard, 64)
	p := newPeer(opts, out)
	srv, err := newHTTPServer(p)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		p.disconnectAll()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		out.Close(time.Second)
	})
	return p, ln.Addr().String()
}

type event map[string]any

func (e event) name() string { s, _ := e["event"].(string); return s }

// runAgent runs the agent to completion and returns its events.
func runAgent(t *testing.T, args ...string) []event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, buildAgent(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("agent %v: %v\nstderr: %s\nstdout: %s", args, err, stderr.String(), stdout)
	}
	var events []event
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("bad event line %q: %v", sc.Text(), err)
		}
		events = append(events, e)
	}
	return events
}

func count(events []event, name string) int {
	n := 0
	for _, e := range events {
		if e.name() == name {
			n++
		}
	}
	return n
}

func find(t *testing.T, events []event, name string) event {
	t.Helper()
	for _, e := range events {
		if e.name() == name {
			return e
		}
	}
	t.Fatalf("no %q event in %v", name, events)
	return nil
}

func peerAgent(t *testing.T, p *peer) agentInfo {
	t.Helper()
	a, ok := p.agent(agentUID)
	if !ok {
		t.Fatalf("peer does not know agent %s; knows %v", agentUID, p.snapshot())
	}
	return a
}

// heartbeatArgs makes the agent send a heartbeat (or poll) every 200 ms for 1.5 s.
func heartbeatArgs(url string, extra ...string) []string {
	return append([]string{"--url", url, "--instance-uid", agentUID, "--heartbeat", "200ms", "--run-for", "1500ms"}, extra...)
}

func TestWebSocketAgentConnectsHeartbeatsAndDisconnects(t *testing.T) {
	p, addr := startPeer(t, peerOptions{RemoteConfig: "receivers: {}\n"})
	events := runAgent(t, heartbeatArgs("ws://"+addr+opampPath,
		"--accept-remote-config", "--id-attr", "k8s.pod.uid=pod-1", "--attr", "k8s.pod.name=p1")...)

	if got := count(events, "connected"); got != 1 {
		t.Errorf("connected events = %d, want 1", got)
	}
	// One reply per agent message: first status, remote config status, then heartbeats.
	if got := count(events, "message"); got < 5 {
		t.Errorf("message events = %d, want >= 5 (heartbeats every 200ms for 1.5s)", got)
	}
	rc := find(t, events, "remote_config")
	if rc["status"] != "APPLIED" {
		t.Errorf("remote_config = %v, want APPLIED", rc)
	}
	stopped := find(t, events, "stopped")
	if stopped["graceful"] != true || stopped["disconnect"] != "ws_library" {
		t.Errorf("stopped = %v", stopped)
	}

	a := peerAgent(t, p)
	if a.Transport != "ws" || a.Messages < 5 {
		t.Errorf("peer saw transport=%s messages=%d", a.Transport, a.Messages)
	}
	if !a.AgentDisconnect {
		t.Error("peer did not receive AgentDisconnect from client.Stop over WebSocket")
	}
	if a.RemoteConfigStatus != "RemoteConfigStatuses_APPLIED" || !a.EffectiveConfig {
		t.Errorf("peer remote config status=%s effective=%v", a.RemoteConfigStatus, a.EffectiveConfig)
	}
	if a.Identifying["k8s.pod.uid"] != "pod-1" || a.NonIdentifying["k8s.pod.name"] != "p1" {
		t.Errorf("attributes: %v / %v", a.Identifying, a.NonIdentifying)
	}
	if a.FullStateRequests != 0 {
		t.Errorf("peer asked for full state %d times (sequence gap?)", a.FullStateRequests)
	}
	waitFor(t, func() bool { return !peerAgentConnected(p) }, "WebSocket closed on the peer")
}

func peerAgentConnected(p *peer) bool {
	a, _ := p.agent(agentUID)
	return a.Connected
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHTTPAgentPollsAndSendsNoDisconnectByDefault(t *testing.T) {
	p, addr := startPeer(t, peerOptions{})
	events := runAgent(t, heartbeatArgs("http://"+addr+opampPath)...)

	if got := count(events, "connected"); got != 1 {
		t.Errorf("connected events = %d, want 1 (only the transition is reported)", got)
	}
	if got := count(events, "message"); got < 5 {
		t.Errorf("message events = %d, want >= 5 (polls every 200ms for 1.5s)", got)
	}
	if s := find(t, events, "stopped"); s["disconnect"] != "none" {
		t.Errorf("stopped = %v", s)
	}
	a := peerAgent(t, p)
	if a.Transport != "http" || a.Messages < 5 {
		t.Errorf("peer saw transport=%s messages=%d", a.Transport, a.Messages)
	}
	if a.AgentDisconnect {
		t.Error("opamp-go's HTTP client.Stop is not expected to send AgentDisconnect")
	}
}

func TestHTTPAgentManualDisconnect(t *testing.T) {
	p, addr := startPeer(t, peerOptions{})
	events := runAgent(t, heartbeatArgs("http://"+addr+opampPath, "--http-disconnect")...)

	s := find(t, events, "stopped")
	if s["disconnect"] != "http_manual" || s["disconnect_status"] != float64(200) {
		t.Errorf("stopped = %v", s)
	}
	a := peerAgent(t, p)
	if !a.AgentDisconnect {
		t.Error("peer did not receive the manual AgentDisconnect")
	}
	if a.FullStateRequests != 0 {
		t.Errorf("manual AgentDisconnect had a sequence gap (%d full state requests)", a.FullStateRequests)
	}
}

func TestRemoteConfigWithRejectIsReportedFailed(t *testing.T) {
	p, addr := startPeer(t, peerOptions{RemoteConfig: "REJECT this config\n"})
	events := runAgent(t, heartbeatArgs("ws://"+addr+opampPath, "--accept-remote-config")...)

	rc := find(t, events, "remote_config")
	if rc["status"] != "FAILED" || !strings.Contains(rc["error"].(string), "REJECT") {
		t.Errorf("remote_config = %v, want FAILED", rc)
	}
	if got := count(events, "remote_config"); got != 1 {
		t.Errorf("remote_config events = %d, want 1", got)
	}
	if a := peerAgent(t, p); a.RemoteConfigStatus != "RemoteConfigStatuses_FAILED" {
		t.Errorf("peer remote config status = %s", a.RemoteConfigStatus)
	}
}

func TestTokenIsSentAndRequired(t *testing.T) {
	for _, url := range []string{"ws://", "http://"} {
		_, addr := startPeer(t, peerOptions{Token: "s3cret"})
		target := url + addr + opampPath
		denied := runAgent(t, "--url", target, "--heartbeat", "200ms", "--run-for", "800ms")
		if count(denied, "connected") != 0 {
			t.Errorf("%s: connected without a token", url)
		}
		if count(denied, "connect_failed") == 0 {
			t.Errorf("%s: no connect_failed without a token: %v", url, denied)
		}
		allowed := runAgent(t, "--url", target, "--token", "s3cret", "--heartbeat", "200ms", "--run-for", "800ms")
		if count(allowed, "connected") != 1 {
			t.Errorf("%s: not connected with the token: %v", url, allowed)
		}
	}
}

func TestNoDisconnectExitsWithoutAgentDisconnect(t *testing.T) {
	p, addr := startPeer(t, peerOptions{})
	events := runAgent(t, heartbeatArgs("ws://"+addr+opampPath, "--no-disconnect")...)

	if s := find(t, events, "stopped"); s["graceful"] != false {
		t.Errorf("stopped = %v", s)
	}
	if peerAgent(t, p).AgentDisconnect {
		t.Error("peer received AgentDisconnect although --no-disconnect was given")
	}
	waitFor(t, func() bool { return !peerAgentConnected(p) }, "peer noticed the closed socket")
}
