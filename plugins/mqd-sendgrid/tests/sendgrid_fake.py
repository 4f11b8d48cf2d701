"""A fake SendGrid v3 Mail Send API: a real HTTP server on 127.0.0.1, port 0, in a thread.

It checks the bearer key, validates the request body the way SendGrid's v3 Mail Send reference
and its error reference document it (answering 400 with SendGrid's ``errors`` body when a rule
is broken), records every request, and answers 202 with an ``X-Message-Id`` (200 in sandbox
mode). Tests script other answers with ``answer(...)`` (used once each, in order) and make it
hang with ``stall = True``.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "SG.test-key.0123456789"
RESERVED = {
    "x-sg-id",
    "x-sg-eid",
    "received",
    "dkim-signature",
    "content-type",
    "content-transfer-encoding",
    "to",
    "from",
    "subject",
    "reply-to",
    "cc",
    "bcc",
}
TOP_LEVEL = {
    "personalizations",
    "from",
    "reply_to",
    "reply_to_list",
    "subject",
    "content",
    "attachments",
    "template_id",
    "headers",
    "categories",
    "custom_args",
    "send_at",
    "batch_id",
    "asm",
    "ip_pool_name",
    "mail_settings",
    "tracking_settings",
}


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: What the fake answered (None while it stalls).
    status: int | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Invalid(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class FakeSendGrid:
    """``start()``, then ``url``; ``requests`` holds what arrived; ``stop()`` when done."""

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.requests: list[Request] = []
        self.script: list[Answer] = []
        self.stall = False
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------

    def start(self) -> FakeSendGrid:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake._handle(self)

            do_GET = do_PUT = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer(self, status: int, body: Any = None, **headers: str) -> None:
        """Answer the next request (after the key check) with this instead of validating it."""
        self.script.append(
            Answer(status, {k.replace("_", "-"): v for k, v in headers.items()}, body)
        )

    @property
    def sent(self) -> list[Any]:
        """The JSON bodies of the requests that were accepted (2xx)."""
        return [r.json for r in self.requests if r.status is not None and r.status < 300]

    # -- serving ------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        request = Request(handler.command, handler.path, dict(handler.headers.items()), body)
        with self._lock:
            self.requests.append(request)
        if self.stall:
            self._release.wait(60)
            return
        answer = self._answer(request)
        request.status = answer.status
        payload = b""
        if answer.body is not None:
            payload = (
                answer.body.encode()
                if isinstance(answer.body, str)
                else json.dumps(answer.body).encode()
            )
        handler.send_response(answer.status)
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        if payload:
            content_type = "text/plain" if isinstance(answer.body, str) else "application/json"
            handler.send_header("Content-Type", content_type)
        handler.end_headers()
        handler.wfile.write(payload)

    def _answer(self, request: Request) -> Answer:
        if request.path != "/v3/mail/send":
            return Answer(404, body={"errors": [{"field": None, "message": "not found"}]})
        if request.method != "POST":
            return Answer(405, body={"errors": [{"field": None, "message": "method not allowed"}]})
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            message = "The provided authorization grant is invalid, expired, or revoked"
            return Answer(401, body={"errors": [{"field": None, "message": message}]})
        with self._lock:
            if self.script:
                return self.script.pop(0)
        try:
            if request.headers.get("Content-Type") != "application/json":
                raise Invalid(None, "Content-Type must be application/json")
            try:
                data = json.loads(request.body.decode("utf-8"))
            except UnicodeDecodeError:
                return Answer(415, body=_errors(None, "Invalid UTF8 in request"))
            except ValueError:
                raise Invalid(None, "Bad Request") from None
            validate(data)
        except Invalid as exc:
            return Answer(400, body=_errors(exc.field, exc.message))
        sandbox = data.get("mail_settings", {}).get("sandbox_mode", {}).get("enable") is True
        message_id = secrets.token_urlsafe(16)
        return Answer(200 if sandbox else 202, {"X-Message-Id": message_id})


def _errors(field: str | None, message: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "field": field, "help": None}]}


# -- SendGrid's documented rules ------------------------------------------------------------------


def validate(data: Any) -> None:
    """Raise Invalid for the first rule of the v3 Mail Send body that ``data`` breaks."""
    if not isinstance(data, dict):
        raise Invalid(None, "Bad Request")
    unknown = set(data) - TOP_LEVEL
    if unknown:
        raise Invalid(sorted(unknown)[0], "unknown field")
    if "from" not in data:
        raise Invalid("from", "The from object must be provided for every email send.")
    _email_object(data["from"], "from")
    _personalizations(data.get("personalizations"))
    subjects = [p.get("subject") for p in data["personalizations"]]
    subject = data.get("subject")
    if subject is None and not all(subjects) and "template_id" not in data:
        raise Invalid("subject", "The subject is required.")
    if subject is not None and (not isinstance(subject, str) or not subject):
        raise Invalid(
            "subject",
            "The subject of your email must be a string at least one character in length.",
        )
    _content(data.get("content"), "template_id" in data)
    if "reply_to" in data and "reply_to_list" in data:
        raise Invalid("reply_to", "reply_to is mutually exclusive with reply_to_list")
    if "reply_to" in data:
        _email_object(data["reply_to"], "reply_to")
    if "reply_to_list" in data:
        entries = data["reply_to_list"]
        if not isinstance(entries, list) or not entries or len(entries) > 1000:
            raise Invalid("reply_to_list", "reply_to_list must hold 1 to 1000 addresses")
        for entry in entries:
            _email_object(entry, "reply_to_list")
        emails = [e["email"].lower() for e in entries]
        if len(set(emails)) != len(emails):
            raise Invalid(
                "reply_to_list", "Each email address in the reply_to_list should be unique"
            )
    for attachment in data.get("attachments", []):
        _attachment(attachment)
    if "headers" in data:
        _headers(data["headers"], "headers")
    if "custom_args" in data:
        _custom_args(data["custom_args"], "custom_args")
    if "categories" in data:
        categories = data["categories"]
        if not isinstance(categories, list) or len(categories) > 10:
            raise Invalid("categories", "There is a limit of 10 categories for each email")
        if len(set(categories)) != len(categories):
            raise Invalid("categories", "The categories must be a unique list")
        for category in categories:
            if not isinstance(category, str) or len(category) > 255 or not category.isascii():
                raise Invalid("categories", "Categories must be ASCII strings of 255 characters")
    for settings in ("mail_settings", "tracking_settings"):
        for name, value in data.get(settings, {}).items():
            if not isinstance(value, dict) or not isinstance(value.get("enable"), bool):
                raise Invalid(f"{settings}.{name}", "enable must be a boolean")
    if "ip_pool_name" in data and not (
        isinstance(data["ip_pool_name"], str) and 2 <= len(data["ip_pool_name"]) <= 64
    ):
        raise Invalid("ip_pool_name", "The name of your IP pool must be a string.")


def _email_object(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not isinstance(value.get("email"), str):
        raise Invalid(where, f"The {where} object must at least have an email parameter")
    address = value["email"]
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(address) > 320:
        raise Invalid(where, f"Does not contain a valid address: {address}")
    if set(value) - {"email", "name"}:
        raise Invalid(where, "only email and name are allowed")
    if "name" in value and not isinstance(value["name"], str):
        raise Invalid(where, "the name must be a string")


def _personalizations(value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise Invalid("personalizations", "You must have at least one personalization.")
    if len(value) > 1000:
        raise Invalid("personalizations", "The personalization block is limited to 1000")
    seen: set[str] = set()
    total = 0
    for index, personalization in enumerate(value):
        where = f"personalizations.{index}"
        if not isinstance(personalization, dict) or not personalization.get("to"):
            raise Invalid(
                f"{where}.to", "The to parameter is required for all personalization objects."
            )
        for kind in ("to", "cc", "bcc"):
            for address in personalization.get(kind, []):
                _email_object(address, f"{where}.{kind}")
                key = address["email"].lower()
                if key in seen:
                    raise Invalid(
                        f"{where}.{kind}",
                        "Each unique email address in the personalizations array should only "
                        f"be included once. You have included {address['email']} more than once.",
                    )
                seen.add(key)
                total += 1
        if "headers" in personalization:
            _headers(personalization["headers"], f"{where}.headers")
        if "custom_args" in personalization:
            _custom_args(personalization["custom_args"], f"{where}.custom_args")
    if total > 1000:
        raise Invalid("personalizations", "There is a limit of 1000 total recipients")


def _content(value: Any, template: bool) -> None:
    if value is None:
        if template:
            return
        raise Invalid("content", "The content param is required unless you are using a template")
    if not isinstance(value, list) or not value:
        raise Invalid("content", "There must be at least one defined content block.")
    types = []
    for index, block in enumerate(value):
        where = f"content.{index}"
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str) or not kind or any(c in kind for c in ";\r\n"):
            raise Invalid(f"{where}.type", "A content type is required")
        text = block.get("value")
        if not isinstance(text, str) or not text:
            raise Invalid(
                f"{where}.value",
                "The content value must be a string at least one character in length.",
            )
        types.append(kind)
    order = [t for t in types if t in ("text/plain", "text/html")]
    expected = [t for t in ("text/plain", "text/html") if t in types]
    if types[: len(order)] != order or order != expected or len(order) != len(set(order)):
        raise Invalid(
            "content",
            "Following RFC 1341, section 7.2, if either text/html or text/plain are to be sent "
            "in your email: text/plain needs to be first, followed by text/html, followed by "
            "any other content.",
        )


def _attachment(value: Any) -> None:
    if not isinstance(value, dict):
        raise Invalid("attachments", "an attachment must be an object")
    content = value.get("content")
    if not isinstance(content, str) or not content:
        raise Invalid(
            "attachments.content",
            "The attachment content must be a string at least one character in length.",
        )
    try:
        base64.b64decode(content, validate=True)
    except binascii.Error:
        raise Invalid(
            "attachments.content", "The attachment content must be base64 encoded."
        ) from None
    filename = value.get("filename")
    if not isinstance(filename, str) or not filename:
        raise Invalid("attachments.filename", "filename is required.")
    if any(c in filename for c in ";,\r\n"):
        raise Invalid("attachments.filename", "The filename of your attachment cannot contain CRLF")
    kind = value.get("type")
    if kind is not None and (
        not isinstance(kind, str) or not kind or any(c in kind for c in ";\r\n")
    ):
        raise Invalid("attachments.type", "The type cannot contain ';', or CRLF characters.")
    disposition = value.get("disposition", "attachment")
    if disposition not in ("inline", "attachment"):
        raise Invalid("attachments.disposition", "The disposition can be inline or attachment")
    content_id = value.get("content_id")
    if content_id is not None and (
        not isinstance(content_id, str) or any(c in content_id for c in ";,\r\n")
    ):
        raise Invalid("attachments.content_id", "The content ID cannot contain CRLF characters.")


def _headers(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise Invalid(where, "headers must be an object")
    names = [name.lower() for name in value]
    if len(set(names)) != len(names):
        raise Invalid(where, "The headers cannot contain duplicate keys.")
    for name, text in value.items():
        if not isinstance(text, str):
            raise Invalid(where, "The header values must be strings.")
        if not name.isascii() or " " in name or not name:
            raise Invalid(
                where, "Header keys cannot contain non-ASCII characters and empty spaces."
            )
        if name.lower() in RESERVED:
            raise Invalid(where, "Header can not be one of the reserved keys.")


def _custom_args(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not value:
        raise Invalid(where, "custom_args cannot be empty.")
    if not all(isinstance(v, str) for v in value.values()):
        raise Invalid(where, "All values of custom arguments object must be strings")
    if len(json.dumps(value).encode()) > 10000:
        raise Invalid(where, "custom arguments may not exceed 10,000 bytes")
