"""Helpers for tests that post SendGrid events to mqd: a key pair like the one SendGrid makes for
its Signed Event Webhook, and the headers SendGrid would send with a body signed by it.

    private_key, verification_key = new_key_pair()   # verification_key goes into the config
    body = json.dumps([{"event": "delivered", ...}]).encode()
    headers = signed_headers(private_key, body)
"""

from __future__ import annotations

import base64
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER

__all__ = ["new_key_pair", "signed_headers"]


def new_key_pair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A fresh P-256 private key and its public key as SendGrid shows it: base64 of the DER
    SubjectPublicKeyInfo (the value for ``webhook_verification_key``)."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_key, base64.b64encode(der).decode("ascii")


def signed_headers(
    private_key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The two headers SendGrid signs a POST of ``body`` with, at ``timestamp`` (Unix seconds,
    default now): ECDSA P-256/SHA-256 over the timestamp's digits followed by the body."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = private_key.sign(stamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    return {
        SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
        TIMESTAMP_HEADER: stamp,
    }
