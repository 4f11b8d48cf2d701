"""The tables of the intake sources other than the spools (``[[smtpd]]``, and ``[[source]]`` with
a ``kind`` for a plugin's): the keys every source shares, shaped like a ``[[spool]]`` (``relay``,
``allowed_senders``, ``check_from``), read here; a source's own keys are left in
``SourceConfig.options`` for its class to read and check."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

from mqd.config.options import Options
from mqd.config.schema import RelayConfig, SourceConfig
from mqd.config.sections import relay_chain, sender_patterns

__all__ = ["GENERIC", "SOURCE_KINDS", "parse_sources"]

#: The built-in sources' own tables (``[[smtpd]]``, ``[[submit]]``, ``[[mailbox]]``), each
#: named after the kind it configures.
SOURCE_KINDS = ("smtpd", "submit", "mailbox")

#: The table of a plugin's source: ``[[source]]`` with ``kind = "<the registered name>"``.
GENERIC = "source"


def parse_sources(
    root: Options, path: Path | None, relays: Mapping[str, RelayConfig]
) -> tuple[SourceConfig, ...]:
    """Every ``[[<kind>]]`` table of ``SOURCE_KINDS``, in that order, then every
    ``[[source]]`` table (a plugin's source: its ``kind`` names the registered class)."""
    sources: list[SourceConfig] = []
    for table in (*SOURCE_KINDS, GENERIC):
        raw = root.raw(table)
        if raw is None:
            continue
        if isinstance(raw, Mapping):
            raw = [raw]
        if not isinstance(raw, list):
            root.report(root.error(table, f"expected one or more [[{table}]] tables"))
            continue
        for index, data in enumerate(raw):
            if not isinstance(data, Mapping):
                root.report(root.error(f"{table}[{index}]", f"expected a table, got {data!r}"))
                continue
            opts = Options(data, section=f"{table}[{index}]", path=path, problems=root.problems)
            source: SourceConfig | None = root.attempt(
                functools.partial(parse_source, opts, table, index, relays), lambda: None
            )
            if source is not None:
                sources.append(source)
    return tuple(sources)


def parse_source(
    opts: Options, table: str, index: int, relays: Mapping[str, RelayConfig]
) -> SourceConfig:
    """The shared keys of one source table; the others stay in ``options`` (not finished)."""
    kind = table
    if table == GENERIC:
        kind = opts.string("kind", "")
        if not kind or kind == GENERIC:
            raise opts.error("kind", 'is required: the source type a plugin registered, e.g. "sqs"')
        if kind in SOURCE_KINDS:
            raise opts.error("kind", f"{kind!r} is configured in its own [[{kind}]] tables")
    if opts.raw("relay") is None:
        if len(relays) != 1:
            raise opts.error("relay", f"is required: one of {', '.join(sorted(relays))}")
        chain: tuple[str, ...] = (next(iter(relays)),)
    else:
        chain = relay_chain(opts, "relay", relays)
    return SourceConfig(
        path=Path(f"{table}[{index}]"),
        relays=chain,
        allowed_senders=sender_patterns(opts, "allowed_senders"),
        check_from=opts.boolean("check_from", True),
        index=index,
        kind=kind,
        options=opts,
        table=table,
    )
