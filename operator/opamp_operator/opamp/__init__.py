"""The OpAMP protocol: wire messages, WebSocket framing and pure helpers (no I/O).

`proto/` holds our .proto files, `generated/` the modules that scripts/gen_proto
makes from them, `frames` the WebSocket message header, `messages` decoding,
validation and construction helpers, `errors` the exceptions they raise.
"""
