package main

import (
	"runtime"
	"syscall"
)

// stopSelf sends SIGSTOP to the calling thread rather than to the process:
// the kernel then stops this thread before the syscall returns, so nothing
// after stopSelf runs until SIGCONT. (With kill(getpid()) another thread may
// take the signal and this one may run on for a moment.) SIGSTOP always stops
// the whole thread group.
func stopSelf() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return syscall.Tgkill(syscall.Getpid(), syscall.Gettid(), syscall.SIGSTOP)
}
