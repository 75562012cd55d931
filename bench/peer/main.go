// Command opamp-peer is a reference OpAMP server built on opamp-go's server
// package, used as a peer in benchmarks and to check the test agent. It serves
// WebSocket and plain HTTP on /v1/opamp, keeps agents in a map and answers
// every message with its server capabilities. GET /agents returns the map as
// JSON. Events are JSON lines on stdout; the first is {"event":"listening",...}.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/open-telemetry/opamp-go/server"
	"github.com/open-telemetry/opamp-go/server/types"
)

const (
	opampPath       = "/v1/opamp"
	eventQueueSize  = 4096
	shutdownTimeout = 5 * time.Second
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("opamp-peer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:4320", "address to listen on (port 0: pick a free port)")
	var opts peerOptions
	fs.StringVar(&opts.Token, "token", "", "require Authorization: Bearer <token> (401 otherwise)")
	fs.StringVar(&opts.RemoteConfig, "remote-config", "",
		"offer this text as remote config to agents that accept remote config")
	fs.BoolVar(&opts.Verbose, "verbose", false, "emit one event per received message")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	out := newEmitter(stdout, eventQueueSize)
	defer out.Close(2 * time.Second)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(stderr, "opamp-peer:", err)
		return 1
	}
	p := newPeer(opts, out)
	srv, err := newHTTPServer(p)
	if err != nil {
		fmt.Fprintln(stderr, "opamp-peer:", err)
		return 1
	}
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	out.Emit("listening", map[string]any{"addr": ln.Addr().String(), "path": opampPath})

	select {
	case sig := <-signals:
		out.Emit("stopping", map[string]any{"reason": "signal:" + sig.String()})
	case err := <-served:
		out.Emit("stopping", map[string]any{"reason": "serve: " + err.Error()})
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	p.disconnectAll()
	_ = srv.Shutdown(ctx)
	out.Emit("stopped", map[string]any{"agents": len(p.snapshot())})
	return 0
}

// newHTTPServer attaches opamp-go's handler to our own mux, so the same port
// also serves GET /agents.
func newHTTPServer(p *peer) (*http.Server, error) {
	opamp := server.New(serverLogger{out: p.out})
	handler, connContext, err := opamp.Attach(server.Settings{
		Callbacks: types.Callbacks{OnConnecting: p.onConnecting},
	})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc(opampPath, handler)
	mux.HandleFunc("GET /agents", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(p.snapshot())
	})
	return &http.Server{
		Handler:           mux,
		ConnContext:       connContext, // opamp-go needs the net.Conn of plain HTTP requests
		ReadHeaderTimeout: 10 * time.Second,
	}, nil
}

// serverLogger turns opamp-go server error logs into events.
type serverLogger struct{ out *emitter }

func (l serverLogger) Debugf(context.Context, string, ...any) {}

func (l serverLogger) Errorf(_ context.Context, format string, v ...any) {
	l.out.Emit("log", map[string]any{"level": "error", "msg": fmt.Sprintf(format, v...)})
}
