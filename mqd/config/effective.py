"""The configuration as mqd uses it, for ``mqd config check``: defaults filled in, secrets
redacted."""

from __future__ import annotations

from typing import Any

from mqd.config.schema import AccountConfig, Config
from mqd.config.units import format_duration

__all__ = ["effective_config"]


def effective_config(config: Config) -> dict[str, Any]:
    """The configuration as mqd uses it, defaults filled in and secrets redacted.

    Call after ``build_relays`` (and ``check_sources``) so that each relay's (and each
    source's) options have been read.
    """
    queue = config.queue
    return {
        "queue": {
            "dir": str(queue.dir),
            "concurrency": queue.concurrency,
            "hostname": queue.hostname,
            "bounce_sender": queue.bounce_sender,
            "max_message_size": queue.max_message_size,
            "scan_interval": format_duration(queue.scan_interval),
            "watch": queue.watch,
            "shutdown_timeout": format_duration(queue.shutdown_timeout),
            "active_limit": queue.active_limit,
            "failed_retention": format_duration(queue.failed_retention),
            "send_later_horizon": format_duration(queue.send_later_horizon),
            "workers": queue.workers,
            "store": queue.store,
            **(
                {"dsn": queue.database.dsn, "node": queue.database.node, "role": queue.role}
                if queue.database is not None
                else {}
            ),
            "retry": {
                "initial": format_duration(queue.retry.initial),
                "max": format_duration(queue.retry.max),
                "lifetime": format_duration(queue.retry.lifetime),
                **(
                    {"max_attempts": queue.retry.max_attempts}
                    if queue.retry.max_attempts is not None
                    else {}
                ),
            },
        },
        "spool": [
            {
                "path": str(spool.path),
                "relay": spool.relay if len(spool.relays) == 1 else list(spool.relays),
                "allowed_senders": list(spool.allowed_senders),
                "check_from": spool.check_from,
            }
            for spool in config.spools
        ],
        **(
            {
                "route": [
                    {"senders": list(route.senders), "relay": list(route.relays)}
                    for route in config.routes
                ]
            }
            if config.routes
            else {}
        ),
        **({"account": [_account(a) for a in config.accounts]} if config.accounts else {}),
        "sendmail": {
            **({"spool": str(config.inject_spool)} if config.spools else {}),
            **(
                {"qualify_domain": config.sendmail.qualify_domain}
                if config.sendmail.qualify_domain
                else {}
            ),
        },
        **_sources(config),
        "relays": {name: relay.options.effective() for name, relay in config.relays.items()},
        "metrics": {
            "enabled": config.metrics.enabled,
            "host": config.metrics.host,
            "port": config.metrics.port,
        },
        "tracing": {"enabled": config.tracing.enabled},
    }


def _sources(config: Config) -> dict[str, Any]:
    """``[[smtpd]]`` ... tables as read (after the sources were built: they read their keys)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for source in config.sources:
        read = source.options.effective() if source.options is not None else {}
        relay = source.relay if len(source.relays) == 1 else list(source.relays)
        tables.setdefault(source.kind, []).append({"relay": relay, **read})
    return tables


def _account(account: AccountConfig) -> dict[str, Any]:
    limits = account.limits
    windows = {
        "max_per_minute": limits.max_per_minute,
        "max_per_hour": limits.max_per_hour,
        "max_per_day": limits.max_per_day,
    }
    return {
        "name": account.name,
        "senders": list(account.senders),
        **{key: value for key, value in windows.items() if value is not None},
        "over_limit": account.over_limit,
    }
