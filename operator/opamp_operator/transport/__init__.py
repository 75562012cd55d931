"""The OpAMP listener: WebSocket and plain HTTP on one port, bytes <-> messages.

`listener.OpAMPListener` owns the socket. Each connection starts in `front.FrontProtocol`,
which reads the request head (`head`), refuses what it can refuse cheaply (size, path,
bearer token, see `auth`) and hands the connection to our own RFC 6455 framing (`ownws`
over `rfc6455`; the default), to websockets (`websocket`, with `--websocket-framing
websockets`) or to our HTTP/1.1 keep-alive server (`httpconn` over `http11`, answering
with `http`). The fleet only ever sees messages and channels; the
listener holds WebSockets of either framing as `wschannel.WsChannel`.
"""

from .http import HttpChannel
from .listener import OpAMPListener
from .websocket import WebSocketChannel

__all__ = ["HttpChannel", "OpAMPListener", "WebSocketChannel"]
