"""The receiving side: the asyncio server (``server``) and its connections
(``connection``), adapting the sans-I/O protocol in ``smtpedge.protocol`` to
sockets, TLS, handler hooks, connection limits and the durable queue."""
