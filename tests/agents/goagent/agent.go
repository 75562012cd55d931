package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/open-telemetry/opamp-go/client"
	"github.com/open-telemetry/opamp-go/client/types"
	"github.com/open-telemetry/opamp-go/protobufs"
	"google.golang.org/protobuf/proto"
)

// rejectMarker in any remote config file body makes the agent report FAILED.
const rejectMarker = "REJECT"

// agent wires one opamp-go client to the event stream.
type agent struct {
	cfg    *config
	out    *emitter
	caps   protobufs.AgentCapabilities
	logger eventLogger

	clientMu sync.Mutex
	client   client.OpAMPClient // replaced by a restart (--accept-restart)
	restarts atomic.Int32       // restarts under way (at most one runs)

	connected atomic.Bool
	// httpRequests counts AgentToServer messages the HTTP client has prepared.
	// opamp-go calls HeaderFunc exactly once per prepared message and gives
	// each message the next sequence number starting at 0, so this count is
	// the sequence number of the next message (used by --http-disconnect).
	httpRequests atomic.Uint64

	mu             sync.Mutex
	uid            []byte                    // current instance UID (the server may assign a new one)
	effective      *protobufs.AgentConfigMap // what GetEffectiveConfig reports
	lastRemoteHash []byte                    // hash of the last remote config processed
	lastFailure    error                     // last error given to OnConnectFailed
}

func newAgent(cfg *config, out *emitter) *agent {
	caps := protobufs.AgentCapabilities_AgentCapabilities_ReportsStatus |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHealth |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHeartbeat
	if cfg.NoReportsHeartbeat {
		caps &^= protobufs.AgentCapabilities_AgentCapabilities_ReportsHeartbeat
	}
	if cfg.AcceptRemoteConfig {
		caps |= protobufs.AgentCapabilities_AgentCapabilities_AcceptsRemoteConfig |
			protobufs.AgentCapabilities_AgentCapabilities_ReportsRemoteConfig |
			protobufs.AgentCapabilities_AgentCapabilities_ReportsEffectiveConfig
	}
	if cfg.AcceptRestart {
		caps |= protobufs.AgentCapabilities_AgentCapabilities_AcceptsRestartCommand
	}
	if len(cfg.Components) > 0 {
		caps |= protobufs.AgentCapabilities_AgentCapabilities_ReportsAvailableComponents
	}
	a := &agent{
		cfg:  cfg,
		out:  out,
		caps: caps,
		uid:  slices.Clone(cfg.InstanceUID[:]),
		effective: &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{
			"": {Body: []byte("# opamp-goagent: no remote config applied yet\n"), ContentType: "text/yaml"},
		}},
	}
	a.logger = eventLogger{out: out, debug: cfg.Debug, httpRejected: a.onHTTPRejected}
	a.client = a.newClient()
	return a
}

func (a *agent) newClient() client.OpAMPClient {
	if a.cfg.Transport == "ws" {
		return client.NewWebSocket(a.logger)
	}
	httpClient := client.NewHTTP(a.logger)
	if a.cfg.NoReportsHeartbeat {
		// Without ReportsHeartbeat opamp-go ignores StartSettings.HeartbeatInterval
		// and the server's offer; poll at --heartbeat anyway, as the Collector's
		// opamp extension polls at its own fixed interval.
		httpClient.SetPollingInterval(a.cfg.Heartbeat)
	}
	return httpClient
}

// cl is the current client (a restart replaces it).
func (a *agent) cl() client.OpAMPClient {
	a.clientMu.Lock()
	defer a.clientMu.Unlock()
	return a.client
}

func (a *agent) start() error {
	c := a.cl()
	if err := c.SetAgentDescription(a.description()); err != nil {
		return fmt.Errorf("SetAgentDescription: %w", err)
	}
	// Health first: SetCapabilities refuses ReportsHealth while health is unset.
	if err := c.SetHealth(a.health()); err != nil {
		return fmt.Errorf("SetHealth: %w", err)
	}
	// Components before capabilities: SetCapabilities refuses ReportsAvailableComponents
	// while none are set.
	if len(a.cfg.Components) > 0 {
		if err := c.SetAvailableComponents(availableComponents(a.cfg.Components)); err != nil {
			return fmt.Errorf("SetAvailableComponents: %w", err)
		}
	}
	caps := a.caps
	if err := c.SetCapabilities(&caps); err != nil {
		return fmt.Errorf("SetCapabilities: %w", err)
	}
	if len(a.cfg.CustomCapabilities) > 0 {
		custom := &protobufs.CustomCapabilities{Capabilities: a.cfg.CustomCapabilities}
		if err := c.SetCustomCapabilities(custom); err != nil {
			return fmt.Errorf("SetCustomCapabilities: %w", err)
		}
	}
	a.mu.Lock()
	uid := uuid.UUID(a.uid) // the server may have assigned another since launch
	a.mu.Unlock()
	header := http.Header{}
	if a.cfg.Token != "" {
		header.Set("Authorization", "Bearer "+a.cfg.Token)
	}
	heartbeat := a.cfg.Heartbeat
	settings := types.StartSettings{
		OpAMPServerURL:    a.cfg.URL,
		Header:            header,
		HeaderFunc:        a.headerFunc,
		InstanceUid:       types.InstanceUid(uid),
		HeartbeatInterval: &heartbeat,
		Callbacks: types.Callbacks{
			OnConnect:       a.onConnect,
			OnConnectFailed: a.onConnectFailed,
			OnError:         a.onError,
			OnMessage:       a.onMessage,
		},
	}
	if a.cfg.AcceptRemoteConfig {
		// Without ReportsEffectiveConfig opamp-go would still put the callback's
		// result in the first message, so only install it with the capability.
		settings.Callbacks.GetEffectiveConfig = a.getEffectiveConfig
	}
	if a.cfg.AcceptRestart {
		settings.Callbacks.OnCommand = a.onCommand
	}
	if err := c.Start(context.Background(), settings); err != nil {
		return fmt.Errorf("Start: %w", err)
	}
	a.out.Emit("started", map[string]any{
		"transport":     a.cfg.Transport,
		"url":           a.cfg.URL,
		"instance_uid":  hex.EncodeToString(uid[:]),
		"instance_uuid": uid.String(),
		"capabilities":  uint64(a.caps),
		"heartbeat":     a.cfg.Heartbeat.String(),
	})
	return nil
}

// availableComponents maps kind/name entries to AvailableComponents (kind ->
// sub-components by name, each with a version), hashed with SHA-256 over the
// sorted entries.
func availableComponents(entries []string) *protobufs.AvailableComponents {
	sorted := slices.Clone(entries)
	sort.Strings(sorted)
	result := &protobufs.AvailableComponents{Components: map[string]*protobufs.ComponentDetails{}}
	for _, entry := range sorted {
		kind, name, _ := strings.Cut(entry, "/")
		details := result.Components[kind]
		if details == nil {
			details = &protobufs.ComponentDetails{SubComponentMap: map[string]*protobufs.ComponentDetails{}}
			result.Components[kind] = details
		}
		details.SubComponentMap[name] = &protobufs.ComponentDetails{Metadata: []*protobufs.KeyValue{{
			Key:   "version",
			Value: &protobufs.AnyValue{Value: &protobufs.AnyValue_StringValue{StringValue: "0.0.0-test"}},
		}}}
	}
	digest := sha256.Sum256([]byte(strings.Join(sorted, "\n")))
	result.Hash = digest[:]
	return result
}

// description builds identifying and non-identifying attributes; a later
// --id-attr/--attr with the same key replaces the earlier value.
func (a *agent) description() *protobufs.AgentDescription {
	ident := []keyValue{{"service.name", a.cfg.ServiceName}, {"service.version", a.cfg.ServiceVersion}}
	ident = mergeKV(ident, a.cfg.IDAttrs)
	var nonIdent []keyValue
	if a.cfg.HostName != "" {
		nonIdent = append(nonIdent, keyValue{"host.name", a.cfg.HostName})
	}
	nonIdent = mergeKV(nonIdent, a.cfg.Attrs)
	return &protobufs.AgentDescription{
		IdentifyingAttributes:    toProtoKV(ident),
		NonIdentifyingAttributes: toProtoKV(nonIdent),
	}
}

func mergeKV(base, extra []keyValue) []keyValue {
	out := slices.Clone(base)
	for _, kv := range extra {
		i := slices.IndexFunc(out, func(o keyValue) bool { return o.Key == kv.Key })
		if i >= 0 {
			out[i] = kv
		} else {
			out = append(out, kv)
		}
	}
	return out
}

func toProtoKV(kvs []keyValue) []*protobufs.KeyValue {
	out := make([]*protobufs.KeyValue, 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, &protobufs.KeyValue{
			Key:   kv.Key,
			Value: &protobufs.AnyValue{Value: &protobufs.AnyValue_StringValue{StringValue: kv.Value}},
		})
	}
	return out
}

func (a *agent) health() *protobufs.ComponentHealth {
	now := uint64(time.Now().UnixNano())
	h := &protobufs.ComponentHealth{Healthy: true, Status: "running", StartTimeUnixNano: now, StatusTimeUnixNano: now}
	if a.cfg.Unhealthy {
		h.Healthy, h.Status, h.LastError = false, "unhealthy", "reported unhealthy by --unhealthy"
	}
	return h
}

func (a *agent) headerFunc(h http.Header) http.Header {
	if a.cfg.Transport == "http" {
		a.httpRequests.Add(1)
	}
	return h
}

func (a *agent) onConnect(context.Context) {
	// The HTTP client calls OnConnect for every 200 response; report only the
	// transition so "connected" means the same thing on both transports.
	// The WebSocket client calls it once per established connection.
	wasConnected := a.connected.Swap(true)
	if a.cfg.Transport == "ws" || !wasConnected {
		a.out.Emit("connected", map[string]any{"transport": a.cfg.Transport})
	}
}

func (a *agent) onConnectFailed(_ context.Context, err error) {
	a.connected.Store(false)
	// opamp-go's WebSocket client reports one failed dial twice with the same
	// error value (inline and again in a deferred call); report it once.
	a.mu.Lock()
	repeated := a.lastFailure != nil && errors.Is(err, a.lastFailure)
	a.lastFailure = err
	a.mu.Unlock()
	if repeated {
		return
	}
	a.out.Emit("connect_failed", map[string]any{"error": errText(err)})
}

func (a *agent) onError(_ context.Context, resp *protobufs.ServerErrorResponse) {
	a.out.Emit("error", map[string]any{"error": resp.GetErrorMessage(), "type": resp.GetType().String()})
}

func (a *agent) onMessage(ctx context.Context, msg *types.MessageData) {
	fields := map[string]any{"remote_config": msg.RemoteConfig != nil}
	if id := msg.AgentIdentification; id != nil {
		a.mu.Lock()
		a.uid = slices.Clone(id.NewInstanceUid)
		a.mu.Unlock()
		fields["new_instance_uid"] = hex.EncodeToString(id.NewInstanceUid)
	}
	a.out.Emit("message", fields)
	if msg.RemoteConfig != nil {
		a.processRemoteConfig(ctx, msg.RemoteConfig)
	}
}

// processRemoteConfig reports APPLIED (and the new effective config) or
// FAILED when a file body contains REJECT. A config with the hash processed
// last is ignored, because servers resend the offer until the status matches.
func (a *agent) processRemoteConfig(ctx context.Context, rc *protobufs.AgentRemoteConfig) {
	hash := rc.GetConfigHash()
	if hash == nil {
		hash = []byte{} // opamp-go refuses a status with a nil hash
	}
	a.mu.Lock()
	if a.lastRemoteHash != nil && bytes.Equal(a.lastRemoteHash, hash) {
		a.mu.Unlock()
		return
	}
	a.lastRemoteHash = slices.Clone(hash)
	rejected := configContains(rc.GetConfig(), rejectMarker)
	if !rejected {
		a.effective = cloneConfigMap(rc.GetConfig())
	}
	a.mu.Unlock()

	status := &protobufs.RemoteConfigStatus{
		LastRemoteConfigHash: hash,
		Status:               protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED,
	}
	fields := map[string]any{"hash": hex.EncodeToString(hash), "status": "APPLIED", "files": configKeys(rc.GetConfig())}
	if rejected {
		status.Status = protobufs.RemoteConfigStatuses_RemoteConfigStatuses_FAILED
		status.ErrorMessage = "config body contains " + rejectMarker
		fields["status"], fields["error"] = "FAILED", status.ErrorMessage
	}
	if err := a.cl().SetRemoteConfigStatus(status); err != nil {
		a.out.Emit("error", map[string]any{"error": "SetRemoteConfigStatus: " + err.Error()})
	}
	if !rejected {
		if err := a.cl().UpdateEffectiveConfig(ctx); err != nil {
			a.out.Emit("error", map[string]any{"error": "UpdateEffectiveConfig: " + err.Error()})
		}
	}
	a.out.Emit("remote_config", fields)
}

// onCommand handles ServerToAgentCommand (opamp-go calls it only with
// AcceptsRestartCommand declared). The restart runs in its own goroutine:
// client.Stop waits for the receive loop this callback runs on.
func (a *agent) onCommand(_ context.Context, command *protobufs.ServerToAgentCommand) error {
	a.out.Emit("command", map[string]any{"type": command.GetType().String()})
	if command.GetType() != protobufs.CommandType_CommandType_Restart {
		return nil
	}
	if a.restarts.Add(1) > 1 {
		a.restarts.Add(-1)
		return nil // one restart at a time
	}
	go a.restart()
	return nil
}

// restart does what a restarting agent process does on the wire: the old
// client stops (WebSocket: AgentDisconnect, then Close), a new one starts with
// the same instance UID (as an agent that persists it) and sequence number 0.
func (a *agent) restart() {
	defer a.restarts.Add(-1)
	a.out.Emit("restarting", nil)
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StopTimeout)
	defer cancel()
	if err := a.cl().Stop(ctx); err != nil {
		a.out.Emit("error", map[string]any{"error": "restart: Stop: " + err.Error()})
	}
	a.connected.Store(false)
	a.clientMu.Lock()
	a.client = a.newClient()
	a.clientMu.Unlock()
	if err := a.start(); err != nil {
		a.out.Emit("start_failed", map[string]any{"error": err.Error()})
		return
	}
	a.out.Emit("restarted", nil)
}

func (a *agent) getEffectiveConfig(context.Context) (*protobufs.EffectiveConfig, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return &protobufs.EffectiveConfig{ConfigMap: cloneConfigMap(a.effective)}, nil
}

func configContains(m *protobufs.AgentConfigMap, marker string) bool {
	for _, f := range m.GetConfigMap() {
		if bytes.Contains(f.GetBody(), []byte(marker)) {
			return true
		}
	}
	return false
}

func configKeys(m *protobufs.AgentConfigMap) []string {
	keys := make([]string, 0, len(m.GetConfigMap()))
	for k := range m.GetConfigMap() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func cloneConfigMap(m *protobufs.AgentConfigMap) *protobufs.AgentConfigMap {
	if m == nil {
		return &protobufs.AgentConfigMap{}
	}
	return proto.Clone(m).(*protobufs.AgentConfigMap)
}

// stop runs client.Stop and reports what went on the wire. On WebSocket,
// opamp-go's Stop queues an AgentToServer with agent_disconnect set, sends it,
// then sends a WebSocket Close frame and waits (up to 5 s) for the server's
// Close. On HTTP, opamp-go's Stop only cancels polling: nothing is sent,
// unless --http-disconnect asks this agent to POST one itself.
func (a *agent) stop(reason string) int {
	a.out.Emit("stopping", map[string]any{"reason": reason})
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StopTimeout)
	defer cancel()
	fields := map[string]any{
		"graceful": true, "reason": reason, "transport": a.cfg.Transport,
		"was_connected": a.connected.Load(),
	}
	code := 0
	if err := a.cl().Stop(ctx); err != nil {
		fields["error"] = "Stop: " + err.Error()
		code = 1
	}
	switch {
	case a.cfg.Transport == "ws":
		fields["disconnect"] = "ws_library"
	case a.cfg.HTTPDisconnect:
		fields["disconnect"] = "http_manual"
		status, err := a.sendHTTPDisconnect(ctx)
		if err != nil {
			fields["disconnect_error"] = err.Error()
			code = 1
		} else {
			fields["disconnect_status"] = status
		}
	default:
		fields["disconnect"] = "none"
	}
	a.out.Emit("stopped", fields)
	return code
}

func (a *agent) sendHTTPDisconnect(ctx context.Context) (int, error) {
	a.mu.Lock()
	uid := slices.Clone(a.uid)
	a.mu.Unlock()
	body, err := proto.Marshal(&protobufs.AgentToServer{
		InstanceUid:     uid,
		SequenceNum:     a.httpRequests.Load(),
		Capabilities:    uint64(a.caps),
		AgentDisconnect: &protobufs.AgentDisconnect{},
	})
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	if a.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+a.cfg.Token)
	}
	if u, err := uuid.FromBytes(uid); err == nil {
		req.Header.Set("OpAMP-Instance-UID", u.String())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// httpRejectedPrefix starts the error opamp-go's HTTP client logs (and reports
// nowhere else) when the server answers with a status other than 200, 429 or
// 503, e.g. 401. Matched so that a rejection is a connect_failed event on both
// transports. Text of opamp-go v0.23.0 (client/internal/httpsender.go).
const httpRejectedPrefix = "invalid response from server"

// onHTTPRejected handles an HTTP response status the client does not retry.
func (a *agent) onHTTPRejected(msg string) {
	a.connected.Store(false)
	a.out.Emit("connect_failed", map[string]any{"error": msg})
}

// eventLogger turns opamp-go's log lines into events; debug lines only with --debug.
type eventLogger struct {
	out          *emitter
	debug        bool
	httpRejected func(msg string)
}

func (l eventLogger) Debugf(_ context.Context, format string, v ...any) {
	if l.debug {
		l.out.Emit("log", map[string]any{"level": "debug", "msg": fmt.Sprintf(format, v...)})
	}
}

func (l eventLogger) Errorf(_ context.Context, format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.out.Emit("log", map[string]any{"level": "error", "msg": msg})
	if strings.HasPrefix(msg, httpRejectedPrefix) {
		l.httpRejected(msg)
	}
}
