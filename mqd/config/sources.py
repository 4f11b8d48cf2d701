"""The tables of the intake sources other than the spools (``[[smtpd]]``): the keys every source
shares, shaped like a ``[[spool]]`` (``relay``, ``allowed_senders``, ``check_from``), read here;
a source's own keys are left in ``SourceConfig.options`` for its class to read and check."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

from mqd.config.options import Options
from mqd.config.schema import SOURCE_KINDS, RelayConfig, SourceConfig
from mqd.config.sections import relay_chain, sender_patterns

__all__ = ["parse_sources"]


def parse_sources(
    root: Options, path: Path | None, relays: Mapping[str, RelayConfig]
) -> tuple[SourceConfig, ...]:
    """Every ``[[<kind>]]`` table of ``SOURCE_KINDS``, in that order."""
    sources: list[SourceConfig] = []
    for kind in SOURCE_KINDS:
        raw = root.raw(kind)
        if raw is None:
            continue
        if isinstance(raw, Mapping):
            raw = [raw]
        if not isinstance(raw, list):
            root.report(root.error(kind, f"expected one or more [[{kind}]] tables"))
            continue
        for index, table in enumerate(raw):
            if not isinstance(table, Mapping):
                root.report(root.error(f"{kind}[{index}]", f"expected a table, got {table!r}"))
                continue
            opts = Options(table, section=f"{kind}[{index}]", path=path, problems=root.problems)
            source: SourceConfig | None = root.attempt(
                functools.partial(parse_source, opts, kind, index, relays), lambda: None
            )
            if source is not None:
                sources.append(source)
    return tuple(sources)


def parse_source(
    opts: Options, kind: str, index: int, relays: Mapping[str, RelayConfig]
) -> SourceConfig:
    """The shared keys of one source table; the others stay in ``options`` (not finished)."""
    if opts.raw("relay") is None:
        if len(relays) != 1:
            raise opts.error("relay", f"is required: one of {', '.join(sorted(relays))}")
        chain: tuple[str, ...] = (next(iter(relays)),)
    else:
        chain = relay_chain(opts, "relay", relays)
    return SourceConfig(
        path=Path(f"{kind}[{index}]"),
        relays=chain,
        allowed_senders=sender_patterns(opts, "allowed_senders"),
        check_from=opts.boolean("check_from", True),
        index=index,
        kind=kind,
        options=opts,
    )
