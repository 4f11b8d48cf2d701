"""moto's SES emulator as a real HTTP server on 127.0.0.1 (port 0), in a thread of the test process.

It is the application and request handler that ``moto.server.ThreadedMotoServer`` serves, with a
thin WSGI layer in front that keeps every SESv2 ``SendEmail`` request body as it arrived: moto
drops the message tags and the configuration set, which the tests check too. What moto accepted
is read back over HTTP from its own ``/moto-api/data.json``.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

import botocore.session
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

SEND_EMAIL_PATH = "/v2/email/outbound-emails"
REGION = "us-east-1"

StartResponse = Callable[..., Any]


class _Recorder:
    """WSGI middleware: keep the JSON body of each SendEmail request, then pass it on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST" and environ.get("PATH_INFO") == SEND_EMAIL_PATH:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
            with self.lock:
                self.requests.append(json.loads(body))
        result: Iterable[bytes] = self.app(environ, start_response)
        return result


class MotoSES:
    def __init__(self) -> None:
        self._recorder = _Recorder(DomainDispatcherApplication(create_backend_app))
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint_url = ""

    def start(self) -> MotoSES:
        self._server = make_server(
            "127.0.0.1", 0, self._recorder, threaded=True, request_handler=MotoRequestHandler
        )
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    # -- state ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every identity and message (moto's own reset), and the recorded requests."""
        request = urllib.request.Request(self.endpoint_url + "/moto-api/reset", method="POST")
        with urllib.request.urlopen(request) as response:
            assert response.status == 200
        with self._recorder.lock:
            self._recorder.requests.clear()

    def verify(self, *identities: str) -> None:
        """Create (and so verify: moto verifies at once) SES identities, through the SES API."""
        client = botocore.session.Session().create_client(
            "sesv2",
            region_name=REGION,
            endpoint_url=self.endpoint_url,
            aws_access_key_id="admin",
            aws_secret_access_key="admin",
        )
        try:
            for identity in identities:
                client.create_email_identity(EmailIdentity=identity)
        finally:
            client.close()

    def requests(self) -> list[dict[str, Any]]:
        """The SendEmail request bodies received, in order, the raw message decoded to bytes
        under ``["Content"]["Raw"]["Data"]``."""
        with self._recorder.lock:
            requests = [json.loads(json.dumps(r)) for r in self._recorder.requests]
        for request in requests:
            raw = request.get("Content", {}).get("Raw")
            if raw is not None:
                raw["Data"] = base64.b64decode(raw["Data"])
        return requests

    def sent(self) -> list[dict[str, Any]]:
        """The messages moto accepted (``id``, ``source``, ``destinations``, ``raw_data``)."""
        with urllib.request.urlopen(self.endpoint_url + "/moto-api/data.json") as response:
            data = json.load(response)
        messages: list[dict[str, Any]] = data.get("ses", {}).get("RawMessage", [])
        return messages
