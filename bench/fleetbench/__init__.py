"""Fleet benchmark of the operator on the real stack (run it with `bench/run`)."""
