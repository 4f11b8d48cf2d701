"""``[[account]]``: senders grouped under a name, with sending limits of their own.

A platform that sends for its customers gives each customer an account: its senders (address
patterns), and limits per minute, hour and day. Over a limit its mail waits in the queue, paced
(``over_limit = "wait"``, the default), or is refused at hand-over (``"refuse"``). A message's
account is the first whose ``senders`` match its envelope sender; a message no account claims
has none and no account limit.
"""

from __future__ import annotations

from pathlib import Path

from mqd.config.options import Options
from mqd.config.schema import AccountConfig, QuotaConfig, SuppressionConfig
from mqd.config.senders import sender_allowed, validate_sender_pattern

__all__ = ["OVER_LIMIT", "AccountConfig", "account_for", "parse_accounts", "parse_suppression"]

#: What happens to a message over its account's limit.
OVER_LIMIT = ("wait", "refuse")


def account_for(accounts: tuple[AccountConfig, ...], sender: str) -> AccountConfig | None:
    """The account ``sender``'s mail belongs to: the first whose senders match, or None."""
    for account in accounts:
        if sender_allowed(sender, account.senders):
            return account
    return None


def parse_accounts(root: Options, path: Path | None) -> tuple[AccountConfig, ...]:
    raw = root.raw("account")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise root.error("account", "expected one or more [[account]] tables")
    accounts: list[AccountConfig] = []
    for index, table in enumerate(raw):
        if not isinstance(table, dict):
            raise root.error(f"account[{index}]", f"expected a table, got {table!r}")
        opts = Options(table, section=f"account[{index}]", path=path, problems=root.problems)

        def parse(opts: Options = opts) -> AccountConfig | None:
            return _parse_account(opts, accounts)

        account = root.attempt(parse, lambda: None)
        if account is not None:
            accounts.append(account)
    return tuple(accounts)


def _parse_account(opts: Options, earlier: list[AccountConfig]) -> AccountConfig:
    name: str = opts.string("name")
    if not name or any(c.isspace() for c in name):
        raise opts.error("name", f"expected a name without spaces, got {name!r}")
    if any(account.name == name for account in earlier):
        raise opts.error("name", f"{name!r} names another [[account]] already")
    patterns: list[str] = opts.string_list("senders", [])
    try:
        senders = tuple(validate_sender_pattern(p) for p in patterns)
    except ValueError as exc:
        raise opts.error("senders", str(exc)) from None
    if not senders:
        raise opts.error("senders", 'is required: e.g. senders = ["*@shop.example.com"]')
    limits = QuotaConfig(
        max_per_minute=opts.integer("max_per_minute", None, minimum=1),
        max_per_hour=opts.integer("max_per_hour", None, minimum=1),
        max_per_day=opts.integer("max_per_day", None, minimum=1),
    )
    account = AccountConfig(
        name=name,
        senders=senders,
        limits=limits,
        over_limit=opts.choice("over_limit", OVER_LIMIT, "wait"),
    )
    opts.finish()
    return account


def parse_suppression(opts: Options) -> SuppressionConfig:
    config = SuppressionConfig(
        enabled=opts.boolean("enabled", True),
        bounce_for=opts.duration("bounce_for", "30d"),
        complaint_for=opts.duration("complaint_for", "0"),
    )
    for key in ("bounce_for", "complaint_for"):
        if getattr(config, key) < 0:
            opts.report(opts.error(key, 'must not be negative ("0" is for good)'))
    opts.finish()
    return config
