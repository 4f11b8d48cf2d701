"""A scripted SESv2 endpoint: a real HTTP server on 127.0.0.1 (port 0) that answers each
``SendEmail`` with the next scripted answer, in SES's rest-json shapes.

For the answers moto cannot produce (throttling, sending paused, a suspended account, SES's own
failures, credentials refused): botocore parses them exactly as it parses SES's, so the relay's
error mapping is tested through botocore's real parser rather than a stub.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering (to make the client's read time out).
    delay: float = 0.0


def ok(message_id: str) -> Answer:
    return Answer(200, json.dumps({"MessageId": message_id}).encode())


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    """An SES error as the service sends it: the code in ``x-amzn-ErrorType``, the text in
    the JSON body."""
    body = json.dumps({"message": message}).encode()
    return Answer(status, body, {"x-amzn-ErrorType": f"{code}:", **(headers or {})})


class FakeSES:
    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        #: SendEmail request bodies as received, the raw message decoded to bytes.
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> FakeSES:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with ``answers`` in order; the last one repeats."""
        with self._lock:
            self.answers = list(answers)

    def _next(self, body: bytes) -> Answer:
        request = json.loads(body or b"{}")
        raw = request.get("Content", {}).get("Raw")
        if raw is not None:
            raw["Data"] = base64.b64decode(raw["Data"])
        with self._lock:
            self.requests.append(request)
            if not self.answers:
                return Answer(500, b'{"message": "no answer scripted"}')
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = fake._next(body)
                if answer.delay and fake._stopping.wait(answer.delay):
                    return
                try:
                    self.send_response(answer.status)
                    headers = {"Content-Type": "application/json", **answer.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:  # the client gave up waiting (a read-timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
