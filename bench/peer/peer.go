package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/open-telemetry/opamp-go/protobufs"
	"github.com/open-telemetry/opamp-go/server/types"
)

// serverCapabilities is what the peer declares in every reply.
const serverCapabilities = protobufs.ServerCapabilities_ServerCapabilities_AcceptsStatus |
	protobufs.ServerCapabilities_ServerCapabilities_OffersRemoteConfig |
	protobufs.ServerCapabilities_ServerCapabilities_AcceptsEffectiveConfig

// agentInfo is what the peer remembers of one agent (and what GET /agents returns).
type agentInfo struct {
	InstanceUID        string            `json:"instance_uid"`
	Transport          string            `json:"transport"`
	Connected          bool              `json:"connected"` // WebSocket open; always false for HTTP
	Messages           uint64            `json:"messages"`
	LastSequenceNum    uint64            `json:"last_sequence_num"`
	FirstSeen          time.Time         `json:"first_seen"`
	LastSeen           time.Time         `json:"last_seen"`
	AgentDisconnect    bool              `json:"agent_disconnect"` // an AgentDisconnect was received
	Capabilities       uint64            `json:"capabilities"`
	Identifying        map[string]string `json:"identifying_attributes"`
	NonIdentifying     map[string]string `json:"non_identifying_attributes"`
	Healthy            *bool             `json:"healthy"`
	RemoteConfigStatus string            `json:"remote_config_status"`
	RemoteConfigHash   string            `json:"remote_config_hash"`
	EffectiveConfig    bool              `json:"has_effective_config"`
	FullStateRequests  uint64            `json:"full_state_requests"`
}

type peerOptions struct {
	Token        string // if set, require "Authorization: Bearer <token>"
	RemoteConfig string // if set, offered to every agent that accepts remote config
	Verbose      bool   // one event per message
}

// peer is a reference OpAMP server: the shape of opamp-go's example server,
// trimmed to what benchmarks need. Agents live in a map keyed by instance UID.
type peer struct {
	opts         peerOptions
	out          *emitter
	remoteConfig *protobufs.AgentRemoteConfig

	mu     sync.Mutex
	agents map[string]*agentInfo
	conns  map[types.Connection]string // open WebSocket connections -> instance UID ("" before the first message)
}

func newPeer(opts peerOptions, out *emitter) *peer {
	p := &peer{
		opts:   opts,
		out:    out,
		agents: map[string]*agentInfo{},
		conns:  map[types.Connection]string{},
	}
	if opts.RemoteConfig != "" {
		body := []byte(opts.RemoteConfig)
		sum := sha256.Sum256(body)
		p.remoteConfig = &protobufs.AgentRemoteConfig{
			Config: &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{
				"": {Body: body, ContentType: "text/yaml"},
			}},
			ConfigHash: sum[:],
		}
	}
	return p
}

func (p *peer) onConnecting(req *http.Request) types.ConnectionResponse {
	if p.opts.Token != "" && req.Header.Get("Authorization") != "Bearer "+p.opts.Token {
		p.out.Emit("rejected", map[string]any{"remote": req.RemoteAddr, "status": http.StatusUnauthorized})
		return types.ConnectionResponse{Accept: false, HTTPStatusCode: http.StatusUnauthorized}
	}
	transport := "http"
	if strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
		transport = "ws"
	}
	return types.ConnectionResponse{
		Accept: true,
		ConnectionCallbacks: types.ConnectionCallbacks{
			OnConnected: p.onConnected(transport),
			OnMessage: func(ctx context.Context, conn types.Connection, msg *protobufs.AgentToServer) *protobufs.ServerToAgent {
				return p.onMessage(conn, transport, msg)
			},
			OnConnectionClose: p.onConnectionClose(transport),
		},
	}
}

func (p *peer) onConnected(transport string) func(context.Context, types.Connection) {
	return func(_ context.Context, conn types.Connection) {
		if transport != "ws" {
			return // every HTTP request is its own "connection"; not worth an event
		}
		p.mu.Lock()
		p.conns[conn] = ""
		p.mu.Unlock()
		p.out.Emit("ws_connected", map[string]any{"remote": conn.Connection().RemoteAddr().String()})
	}
}

func (p *peer) onConnectionClose(transport string) func(types.Connection) {
	return func(conn types.Connection) {
		if transport != "ws" {
			return
		}
		p.mu.Lock()
		uid := p.conns[conn]
		delete(p.conns, conn)
		if a := p.agents[uid]; a != nil {
			a.Connected = false
		}
		p.mu.Unlock()
		p.out.Emit("ws_closed", map[string]any{"instance_uid": uid})
	}
}

func (p *peer) onMessage(conn types.Connection, transport string, msg *protobufs.AgentToServer) *protobufs.ServerToAgent {
	uid := hex.EncodeToString(msg.GetInstanceUid())
	now := time.Now().UTC()
	resp := &protobufs.ServerToAgent{InstanceUid: msg.GetInstanceUid(), Capabilities: uint64(serverCapabilities)}

	p.mu.Lock()
	a, known := p.agents[uid]
	if !known {
		a = &agentInfo{InstanceUID: uid, FirstSeen: now}
		p.agents[uid] = a
	}
	if transport == "ws" {
		p.conns[conn] = uid
		a.Connected = true
	}
	// A sequence gap or a first message without a description means the
	// server's view is incomplete: ask for the full state, as the spec says.
	gap := known && msg.GetSequenceNum() != a.LastSequenceNum+1
	missing := a.Identifying == nil && msg.GetAgentDescription() == nil
	if gap || missing {
		resp.Flags |= uint64(protobufs.ServerToAgentFlags_ServerToAgentFlags_ReportFullState)
		a.FullStateRequests++
	}
	a.Transport = transport
	a.Messages++
	a.LastSequenceNum = msg.GetSequenceNum()
	a.LastSeen = now
	a.update(msg)
	if p.remoteConfig != nil && p.wantsRemoteConfig(a) {
		resp.RemoteConfig = p.remoteConfig
	}
	disconnect := msg.GetAgentDisconnect() != nil
	p.mu.Unlock()

	switch {
	case !known:
		p.out.Emit("agent_new", map[string]any{"instance_uid": uid, "transport": transport})
	case disconnect:
		p.out.Emit("agent_disconnect", map[string]any{"instance_uid": uid, "transport": transport})
	}
	if p.opts.Verbose {
		p.out.Emit("message", map[string]any{
			"instance_uid": uid, "transport": transport, "sequence_num": msg.GetSequenceNum(),
			"full_state_requested": gap || missing,
		})
	}
	return resp
}

// update copies the reported state; fields absent from a message keep their
// last value (OpAMP messages carry only what changed).
func (a *agentInfo) update(msg *protobufs.AgentToServer) {
	if d := msg.GetAgentDescription(); d != nil {
		a.Identifying = attrMap(d.GetIdentifyingAttributes())
		a.NonIdentifying = attrMap(d.GetNonIdentifyingAttributes())
	}
	if msg.GetCapabilities() != 0 {
		a.Capabilities = msg.GetCapabilities()
	}
	if h := msg.GetHealth(); h != nil {
		healthy := h.GetHealthy()
		a.Healthy = &healthy
	}
	if s := msg.GetRemoteConfigStatus(); s != nil {
		a.RemoteConfigStatus = s.GetStatus().String()
		a.RemoteConfigHash = hex.EncodeToString(s.GetLastRemoteConfigHash())
	}
	if msg.GetEffectiveConfig() != nil {
		a.EffectiveConfig = true
	}
	if msg.GetAgentDisconnect() != nil {
		a.AgentDisconnect = true
	}
}

func (p *peer) wantsRemoteConfig(a *agentInfo) bool {
	accepts := a.Capabilities&uint64(protobufs.AgentCapabilities_AgentCapabilities_AcceptsRemoteConfig) != 0
	current := a.RemoteConfigHash == hex.EncodeToString(p.remoteConfig.GetConfigHash())
	return accepts && !current
}

func attrMap(kvs []*protobufs.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = anyValueText(kv.GetValue())
	}
	return m
}

func anyValueText(v *protobufs.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *protobufs.AnyValue_StringValue:
		return x.StringValue
	case *protobufs.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *protobufs.AnyValue_BoolValue:
		return fmt.Sprint(x.BoolValue)
	case *protobufs.AnyValue_DoubleValue:
		return fmt.Sprint(x.DoubleValue)
	case *protobufs.AnyValue_BytesValue:
		return hex.EncodeToString(x.BytesValue)
	default:
		return ""
	}
}

// snapshot returns a copy of every agent, sorted by instance UID.
func (p *peer) snapshot() []agentInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]agentInfo, 0, len(p.agents))
	for _, a := range p.agents {
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].InstanceUID < out[j].InstanceUID })
	return out
}

// disconnectAll closes every open WebSocket (http.Server.Shutdown does not
// touch hijacked connections).
func (p *peer) disconnectAll() {
	p.mu.Lock()
	conns := make([]types.Connection, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.Disconnect()
	}
}

func (p *peer) agent(uid string) (agentInfo, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, ok := p.agents[uid]
	if !ok {
		return agentInfo{}, false
	}
	return *a, true
}
