"""The SMTP submission logins: a users file of ``name:hash[:senders]`` lines, and the password
hashes in it.

Format, one login a line (blank lines and lines starting with ``#`` are skipped)::

    alice:$scrypt$n=16384,r=8,p=1$<salt>$<key>
    billing:$pbkdf2-sha256$600000$<salt>$<key>:billing@example.com,*@invoices.example.com

``<salt>`` and ``<key>`` are base64 (standard alphabet, no padding). ``$scrypt$`` is
``hashlib.scrypt`` (64-byte key); ``$pbkdf2-sha256$`` is ``hashlib.pbkdf2_hmac("sha256", ...)``
with the iteration count given (32-byte key). ``mqd smtpd passwd`` makes a scrypt hash (it asks
for the password twice, or reads one line from standard input).

The optional third field lists the senders this login may use (patterns as in
``allowed_senders``), on top of the source's own list: both must allow a sender.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from mqd.config.senders import validate_sender_pattern
from mqd.intake.source import Login

__all__ = ["User", "Verifier", "hash_password", "read_users", "verify_password"]

#: scrypt's cost: 16 MiB of memory and some 50 ms a check (OWASP's minimum is n=2**17 with
#: r=8 for interactive logins; an SMTP client logs in once a connection, on the event loop).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


@dataclass(frozen=True)
class User:
    name: str
    hash: str = ""
    allowed_senders: tuple[str, ...] = ()

    @property
    def login(self) -> Login:
        return Login(self.name, self.allowed_senders)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A ``$scrypt$`` hash of ``password`` for the users file."""
    salt = salt if salt is not None else os.urandom(16)
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=64
    )
    return f"$scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed`` (False for a hash that cannot be read)."""
    try:
        key, expected = _derive(password.encode("utf-8"), hashed)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(key, expected)


class Verifier:
    """``verify_password`` that remembers the logins that succeeded: an application that opens
    a connection per message (Django's ``send_mail``) logs in each time, and a scrypt check
    costs the event loop some 50-100 ms. What it keeps is a keyed hash of each password that
    matched (the key is random, made per process), never the password; a wrong password is
    always checked in full."""

    def __init__(self, size: int = 1024) -> None:
        self._key = os.urandom(32)
        self._size = size
        self._good: dict[tuple[str, bytes], None] = {}

    def verify(self, password: str, hashed: str) -> bool:
        token = (hashed, hmac.digest(self._key, password.encode("utf-8"), "sha256"))
        if token in self._good:
            return True
        if not verify_password(password, hashed):
            return False
        if len(self._good) >= self._size:
            del self._good[next(iter(self._good))]
        self._good[token] = None
        return True


def _parse(hashed: str) -> tuple[str, dict[str, int], bytes, bytes]:
    """``hashed``'s scheme, parameters, salt and key; ValueError (or binascii.Error) when it
    is not in a known format."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[0]:
        raise ValueError("expected $scheme$parameters$salt$key")
    _, scheme, params, salt_text, key_text = parts
    if scheme == "scrypt":
        pairs = [item.partition("=") for item in params.split(",")]
        cost = {name: int(value) for name, _, value in pairs}
        if set(cost) != {"n", "r", "p"}:
            raise ValueError("expected the scrypt parameters n=..,r=..,p=..")
    elif scheme == "pbkdf2-sha256":
        cost = {"iterations": int(params)}
    else:
        raise ValueError(f"unknown scheme {scheme!r} (known: scrypt, pbkdf2-sha256)")
    return scheme, cost, _unb64(salt_text), _unb64(key_text)


def _derive(password: bytes, hashed: str) -> tuple[bytes, bytes]:
    """The key ``password`` gives under ``hashed``'s scheme and salt, and ``hashed``'s key."""
    scheme, cost, salt, expected = _parse(hashed)
    if scheme == "scrypt":
        n, r, p = cost["n"], cost["r"], cost["p"]
        key = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=2**28)
    else:
        key = hashlib.pbkdf2_hmac("sha256", password, salt, cost["iterations"], len(expected))
    return key, expected


def read_users(path: Path) -> dict[str, User]:
    """The logins in ``path``. ValueError names the line of a problem; OSError when it cannot
    be read."""
    users: dict[str, User] = {}
    text = path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        hashed, _, senders = rest.partition(":")
        if not name or not hashed:
            raise ValueError(f"line {number}: expected name:hash[:senders]")
        try:
            _parse(hashed)
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"line {number} ({name}): the hash cannot be read: {exc}") from None
        try:
            patterns = tuple(
                validate_sender_pattern(p.strip()) for p in senders.split(",") if p.strip()
            )
        except ValueError as exc:
            raise ValueError(f"line {number} ({name}): {exc}") from None
        if name in users:
            raise ValueError(f"line {number}: the login {name!r} is given twice")
        users[name] = User(name, hashed, patterns)
    return users
