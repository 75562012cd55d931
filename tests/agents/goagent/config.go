package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
)

// config is everything the command line decides.
type config struct {
	URL                string
	Transport          string // "ws" or "http", from the URL scheme
	InstanceUID        uuid.UUID
	ServiceName        string
	ServiceVersion     string
	HostName           string
	IDAttrs            []keyValue
	Attrs              []keyValue
	Heartbeat          time.Duration
	Token              string
	AcceptRemoteConfig bool
	SilentAfter        time.Duration
	RunFor             time.Duration
	NoDisconnect       bool
	HTTPDisconnect     bool
	Unhealthy          bool
	Debug              bool
	StopTimeout        time.Duration
	NoReportsHeartbeat bool
	AcceptRestart      bool
	CustomCapabilities []string
	Components         []string // kind/name, e.g. receivers/otlp
}

type keyValue struct{ Key, Value string }

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	if s == "" {
		return errors.New("empty value")
	}
	*l = append(*l, s)
	return nil
}

// kvList is a repeatable key=value flag.
type kvList []keyValue

func (l *kvList) String() string {
	parts := make([]string, 0, len(*l))
	for _, kv := range *l {
		parts = append(parts, kv.Key+"="+kv.Value)
	}
	return strings.Join(parts, ",")
}

func (l *kvList) Set(s string) error {
	key, value, ok := strings.Cut(s, "=")
	if !ok || key == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	*l = append(*l, keyValue{Key: key, Value: value})
	return nil
}

func parseConfig(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("opamp-goagent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hostname, _ := os.Hostname()

	cfg := &config{}
	var uidText string
	var idAttrs, attrs kvList
	var custom, components stringList
	fs.StringVar(&cfg.URL, "url", "", "OpAMP server URL: ws://... uses WebSocket, http://... plain HTTP (required)")
	fs.StringVar(&uidText, "instance-uid", "", "instance UID, 32 hex digits or a UUID string (default: random UUIDv7)")
	fs.StringVar(&cfg.ServiceName, "service-name", "opamp-goagent", "identifying attribute service.name")
	fs.StringVar(&cfg.ServiceVersion, "service-version", "0.0.0-test", "identifying attribute service.version")
	fs.StringVar(&cfg.HostName, "host-name", hostname, "non-identifying attribute host.name (empty: not sent)")
	fs.Var(&idAttrs, "id-attr", "extra identifying attribute key=value (repeatable)")
	fs.Var(&attrs, "attr", "extra non-identifying attribute key=value (repeatable)")
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", 30*time.Second,
		"heartbeat interval (WebSocket; 0 disables) or polling interval (HTTP; must be > 0)")
	fs.StringVar(&cfg.Token, "token", "", "send Authorization: Bearer <token>")
	fs.BoolVar(&cfg.AcceptRemoteConfig, "accept-remote-config", false,
		"declare AcceptsRemoteConfig, ReportsRemoteConfig, ReportsEffectiveConfig; "+
			"a config whose body contains REJECT is reported FAILED, others APPLIED")
	fs.DurationVar(&cfg.SilentAfter, "silent-after", 0,
		"after this long, flush stdout and SIGSTOP the own process: sockets stay open, nothing is sent")
	fs.DurationVar(&cfg.RunFor, "run-for", 0, "stop after this long (0: run until SIGTERM/SIGINT)")
	fs.BoolVar(&cfg.NoDisconnect, "no-disconnect", false,
		"on stop (run-for or signal) exit at once via os.Exit, without client.Stop")
	fs.BoolVar(&cfg.HTTPDisconnect, "http-disconnect", false,
		"HTTP only: after client.Stop, POST one last AgentToServer carrying AgentDisconnect "+
			"(opamp-go's HTTP client does not send one)")
	fs.BoolVar(&cfg.Unhealthy, "unhealthy", false, "report health healthy=false")
	fs.BoolVar(&cfg.Debug, "debug", false, "emit the client library's debug log lines as events")
	fs.BoolVar(&cfg.NoReportsHeartbeat, "no-reports-heartbeat", false,
		"do not declare ReportsHeartbeat (like the Collector's opamp extension): the server's offered "+
			"interval is ignored; over WebSocket --heartbeat 0 sends nothing after the first messages "+
			"but still answers pings; over HTTP it polls at --heartbeat")
	fs.DurationVar(&cfg.StopTimeout, "stop-timeout", 10*time.Second, "how long client.Stop may take")
	fs.BoolVar(&cfg.AcceptRestart, "accept-restart", false,
		"declare AcceptsRestartCommand; on a Restart command stop the client (as a restarting "+
			"process does: AgentDisconnect and Close over WebSocket) and start a new one with the same instance UID")
	fs.Var(&custom, "custom-capability", "report this custom capability in CustomCapabilities (repeatable)")
	fs.Var(&components, "available-component",
		"declare ReportsAvailableComponents and report kind/name (e.g. receivers/otlp) in "+
			"AvailableComponents (repeatable): the hash first, the full map when the server asks")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	cfg.IDAttrs, cfg.Attrs = idAttrs, attrs
	cfg.CustomCapabilities = custom
	for _, item := range components {
		if kind, name, ok := strings.Cut(item, "/"); !ok || kind == "" || name == "" {
			return nil, fmt.Errorf("--available-component: want kind/name, got %q", item)
		}
	}
	cfg.Components = components

	transport, err := transportOf(cfg.URL)
	if err != nil {
		return nil, err
	}
	cfg.Transport = transport
	if cfg.Transport == "http" && cfg.Heartbeat <= 0 {
		return nil, errors.New("--heartbeat must be > 0 for HTTP (it is the polling interval)")
	}
	if cfg.Heartbeat < 0 {
		return nil, errors.New("--heartbeat must not be negative")
	}
	if cfg.HTTPDisconnect && cfg.Transport != "http" {
		return nil, errors.New("--http-disconnect only applies to http:// URLs")
	}
	cfg.InstanceUID, err = parseInstanceUID(uidText)
	return cfg, err
}

func transportOf(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("--url is required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("--url: %w", err)
	}
	switch u.Scheme {
	case "ws", "wss":
		return "ws", nil
	case "http", "https":
		return "http", nil
	default:
		return "", fmt.Errorf("--url scheme must be ws, wss, http or https, got %q", u.Scheme)
	}
}

// parseInstanceUID accepts 32 hex digits or any UUID spelling uuid.Parse knows;
// empty means a fresh UUIDv7 (what the OpAMP spec recommends for new agents).
func parseInstanceUID(text string) (uuid.UUID, error) {
	if text == "" {
		return uuid.NewV7()
	}
	uid, err := uuid.Parse(text)
	if err != nil {
		return uuid.UUID{}, fmt.Errorf("--instance-uid %q: want 16 bytes as 32 hex digits or a UUID: %w", text, err)
	}
	return uid, nil
}
