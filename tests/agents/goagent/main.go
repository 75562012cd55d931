// Command opamp-goagent is a small OpAMP agent built on the opamp-go client,
// used by the opamp-operator tests. It prints one JSON object per line on
// stdout for every event (see README.md next to this file).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const (
	eventQueueSize = 4096
	flushTimeout   = 2 * time.Second
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "opamp-goagent:", err)
		return 2
	}
	out := newEmitter(stdout, eventQueueSize)
	defer out.Close(flushTimeout)

	a := newAgent(cfg, out)
	// Subscribe before Start so a SIGTERM right after launch is still graceful.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)

	if err := a.start(); err != nil {
		out.Emit("start_failed", map[string]any{"error": err.Error()})
		return 1
	}
	reason := waitForStop(cfg, out, signals)
	if cfg.NoDisconnect {
		// Abrupt exit: no AgentDisconnect, no WebSocket Close frame. The kernel
		// still closes the TCP socket (FIN) when the process exits.
		out.Emit("stopped", map[string]any{"graceful": false, "reason": reason, "transport": cfg.Transport})
		out.Close(flushTimeout)
		os.Exit(0)
	}
	return a.stop(reason)
}

// waitForStop blocks until a signal or --run-for, freezing the process once
// when --silent-after elapses. Returns the stop reason.
func waitForStop(cfg *config, out *emitter, signals <-chan os.Signal) string {
	var runFor, silent <-chan time.Time
	if cfg.RunFor > 0 {
		runFor = time.After(cfg.RunFor)
	}
	if cfg.SilentAfter > 0 {
		silent = time.After(cfg.SilentAfter)
	}
	for {
		select {
		case sig := <-signals:
			return "signal:" + sig.String()
		case <-runFor:
			return "run_for"
		case <-silent:
			silent = nil
			freezeSelf(out)
		}
	}
}

// freezeSelf stops the whole process with SIGSTOP. Every socket stays open
// (the kernel keeps ACKing TCP) but the agent sends nothing at all: no
// heartbeats, no HTTP polls, no WebSocket pongs. SIGCONT resumes it; a SIGTERM
// sent meanwhile is only handled after SIGCONT; SIGKILL works at any time.
func freezeSelf(out *emitter) {
	out.Emit("silent", nil)
	out.Flush(flushTimeout)
	if err := stopSelf(); err != nil {
		out.Emit("error", map[string]any{"error": "SIGSTOP self: " + err.Error()})
		return
	}
	out.Emit("resumed", nil)
}
