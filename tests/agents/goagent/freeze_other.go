//go:build !linux

package main

import (
	"os"
	"syscall"
)

// stopSelf stops the whole process; outside Linux there is no per-thread kill.
func stopSelf() error {
	return syscall.Kill(os.Getpid(), syscall.SIGSTOP)
}
