"""The keys of a ``[[submit]]`` table of its own (``relay``, ``allowed_senders`` and
``check_from`` are every source's: ``mqd.config.sources``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from mqd.config.options import Options, Secret
from mqd.config.schema import Config, SourceConfig

__all__ = ["SubmitSettings"]


@dataclass(frozen=True)
class SubmitSettings:
    #: ``Authorization: Bearer <token>``: which table a request is for.
    token: Secret = field(repr=False)
    #: How long an ``Idempotency-Key`` is remembered (seconds).
    idempotency_for: float = 86400.0

    @property
    def scope(self) -> str:
        """A name of the token that does not give it away: the idempotency keys' namespace."""
        return hashlib.sha256(self.token.reveal().encode("utf-8", "surrogatepass")).hexdigest()[:16]

    @classmethod
    def read(cls, source: SourceConfig, app: Config) -> SubmitSettings:
        """Read and check the table's own keys; ConfigError names the first wrong one."""
        opts = source.options or Options({}, section=source.name, path=app.source)
        token = opts.secret("token", required=True)
        assert token is not None
        settings = cls(token=token, idempotency_for=opts.duration("idempotency_for", "24h"))
        opts.finish()
        if settings.idempotency_for < 60:
            raise opts.error("idempotency_for", 'must be at least "1m", e.g. "24h"')
        if not app.http.enabled:
            raise opts.error(
                "token",
                "the submit API is served by the HTTP server: set [http] enabled = true "
                "(and its host and port)",
            )
        value = token.reveal()
        for other, what in ((app.http.token, "token"), (app.http.operator_token, "operator_token")):
            if other is not None and other.reveal() == value:
                raise opts.error(
                    "token",
                    f"must not be the same as [http] {what}: a producer that may submit must "
                    "not read the API or act on the queue; make another (openssl rand -hex 32)",
                )
        for earlier in app.sources:
            if earlier.kind != source.kind or earlier.index >= source.index:
                continue
            if _token_of(earlier, app) == value:
                raise opts.error(
                    "token",
                    f"is the token of {earlier.name} too: the token says which table (relay, "
                    "allowed_senders) a request is for; give each its own",
                )
        return settings


def _token_of(source: SourceConfig, app: Config) -> str | None:
    """The token of another ``[[submit]]`` table, read again apart (its problems are its own)."""
    if source.options is None:
        return None
    keys = ("token", "token_file", "token_env")
    table = {key: source.options.raw(key) for key in keys if key in source.options.keys()}  # noqa: SIM118
    opts = Options(table, section=source.name, path=app.source, problems=[])
    try:
        secret = opts.secret("token")
    except Exception:  # its own problem, reported with that table
        return None
    return secret.reveal() if secret is not None else None
