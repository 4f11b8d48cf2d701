"""A message's queue entry, made from its parsed envelope: at intake, and again from its body for
a store that keeps no entry for a message never attempted (the file store after a restart)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from mqd.config.accounts import account_for
from mqd.config.schema import Config, SpoolConfig
from mqd.errors import SpoolError
from mqd.message.content import decoded_header
from mqd.message.envelope import ParsedMessage, is_delivery_report, parse_message
from mqd.message.sendat import send_at_of
from mqd.plugins.host import PluginHost
from mqd.queue.entry import QueueEntry, RcptStatus, RecipientState, id_time
from mqd.queue.failed import FailedRecipient, FailureRecord
from mqd.queue.file.rebuild import Unread

__all__ = ["make_entry", "rebuilder"]


def make_entry(
    entry_id: str,
    spool: SpoolConfig,
    spool_name: str,
    size: int,
    parsed: ParsedMessage,
    route: tuple[str, ...],
    created: float,
    now: float,
    send_at: float | None = None,
    account: str | None = None,
) -> QueueEntry:
    """The new queue entry of a parsed message taken from ``spool`` (first attempted at
    ``send_at`` when it is to go later, see ``mqd.message.sendat``)."""
    recipients = [RecipientState(address) for address in parsed.recipients]
    recipients += [
        RecipientState(
            address,
            RcptStatus.FAILED,
            reply=f"553 5.1.3 invalid recipient address: {problem}",
            status_code="5.1.3",
        )
        for address, problem in parsed.invalid_recipients
    ]
    return QueueEntry(
        id=entry_id,
        sender=sys.intern(parsed.sender),  # a few senders, thousands of messages each
        recipients=recipients,
        relay=route[0],
        route=list(route) if len(route) > 1 else [],
        source=spool.key,
        created_at=created,
        next_attempt_at=send_at or now,
        send_at=send_at,
        account=account,
        size=size,
        is_report=is_delivery_report(parsed.headers),
        spool_name=spool_name,
        message_id=parsed.headers.get("message-id", ""),
        traceparent=parsed.headers.get("traceparent", ""),
        subject=decoded_header(parsed.headers.get("subject")),
    )


def rebuilder(
    config: Config,
    host: PluginHost | None,
    route_for: Callable[[Config, SpoolConfig, str], tuple[str, ...]],
    now: Callable[[], float],
) -> Callable[[Unread], QueueEntry | FailureRecord]:
    """The file store's ``rebuild``: the entry a body stands for, as intake made it (its age
    from its id, so that its lifetime does not restart), or why it goes to failed/ instead.
    With a ``host`` the policy is checked again (the daemon); without one (looking at a stopped
    queue) it is not: the daemon does that when it next starts."""
    # A source's bodies state their envelope (mqd.intake.handover): rebuilt as a spool's are.
    spools = {spool.key: spool for spool in (*config.spools, *config.sources)}

    def rebuild(unread: Unread) -> QueueEntry | FailureRecord:
        spool = spools.get(unread.source)
        if spool is None:
            return FailureRecord(
                "recovery",
                "claimed from a spool (or taken in by a source) that is no longer configured; "
                "re-inject it into a configured spool to send it",
            )
        if len(unread.body) > config.queue.max_message_size:
            return FailureRecord(
                "intake",
                f"it is {len(unread.body)} bytes, more than queue.max_message_size "
                f"({config.queue.max_message_size} bytes)",
                spool=str(spool.path),
            )
        try:
            parsed = parse_message(unread.body)
        except SpoolError as exc:
            return FailureRecord("intake", str(exc), spool=str(spool.path))
        route = route_for(config, spool, parsed.sender)
        if host is not None:
            refusal = host.check_policy(parsed, spool, route[0], config)
            if refusal:
                return FailureRecord(
                    "policy",
                    refusal,
                    spool=str(spool.path),
                    sender=parsed.sender,
                    recipients=tuple(FailedRecipient(a, "refused") for a in parsed.recipients),
                )
        current = now()
        created = min(id_time(unread.entry_id) or current, current)
        try:
            send_at = send_at_of(parsed.headers, current, config.queue.send_later_horizon)
        except SpoolError as exc:
            return FailureRecord("intake", str(exc), spool=str(spool.path))
        return make_entry(
            unread.entry_id,
            spool,
            f"{unread.entry_id}.eml",
            len(unread.body),
            parsed,
            route,
            created,
            current,
            send_at,
            account.name if (account := account_for(config.accounts, parsed.sender)) else None,
        )

    return rebuild
