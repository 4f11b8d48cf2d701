"""HTTP submission (``[[submit]]``): ``POST /api/v1/messages`` on the ``[http]`` server, a raw
RFC 5322 message or JSON, authenticated by the table's own token, handed over to the queue and
answered 202 once the message is durable; ``Idempotency-Key`` makes a retry safe."""
