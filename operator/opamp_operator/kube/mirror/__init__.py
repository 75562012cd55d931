"""The status mirror: fleet events in, OpAMPAgent creates, status patches and Events out."""
