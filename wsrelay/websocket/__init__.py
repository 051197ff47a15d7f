"""One WebSocket's life: handshake, taking the socket, the Sans-I/O protocol, the
connection and its queue, what its messages mean (raw or ``wsrelay.v1``), and the encoders
the hub frames messages with."""
