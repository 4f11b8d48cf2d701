"""The suppression list's administration (``mqd suppress``, the API): store operations of the
queue admin, through the running daemon or on a stopped queue, saved at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any, Protocol

from mqd.clock import Clock
from mqd.config.accounts import account_for
from mqd.config.schema import Config
from mqd.delivery.guards import Guards
from mqd.delivery.suppression import Suppression, from_csv
from mqd.errors import AdminError
from mqd.queue.store import QueueStore
from mqd.tracking.vocabulary import ProviderEvent, Status

__all__ = ["SuppressionOps"]


class _Node(Protocol):
    @property
    def config(self) -> Config: ...
    @property
    def store(self) -> QueueStore: ...
    @property
    def guards(self) -> Guards: ...


class SuppressionOps:
    """Mixed into ``QueueAdmin``: its ``op_suppress_*`` operations."""

    node: _Node
    clock: Clock

    @property
    def store(self) -> QueueStore:
        return self.node.store

    async def op_suppress_list(self, account: str | None = None) -> list[dict[str, Any]]:
        await self._save()  # with a fleet's list: its latest changes too
        items = self.node.guards.suppressions.items(self.clock.time(), account)
        return [asdict(item) for item in items]

    async def op_suppress_add(
        self,
        addresses: Sequence[str],
        account: str = "",
        reason: str = "added by the administrator",
        kind: str = "manual",
        for_seconds: float | None = None,
    ) -> dict[str, Any]:
        now = self.clock.time()
        until = now + for_seconds if for_seconds else None
        added = [
            address
            for address in addresses
            if self.node.guards.suppressions.add(
                Suppression(address, account, kind, reason, now, until)
            )
        ]
        await self._save()
        return {"added": added}

    async def op_suppress_remove(
        self, addresses: Sequence[str], account: str | None = None
    ) -> dict[str, Any]:
        removed = [
            asdict(item)
            for address in addresses
            for item in self.node.guards.suppressions.remove(address, account)
        ]
        await self._save()
        return {"removed": removed}

    async def op_suppress_import(self, csv_text: str) -> dict[str, Any]:
        try:
            items = from_csv(csv_text, self.clock.time())
        except ValueError as exc:
            raise AdminError(f"cannot import: {exc}") from None
        added = sum(1 for item in items if self.node.guards.suppressions.add(item))
        await self._save()
        return {"imported": added, "rows": len(items)}

    async def note_reported(
        self,
        events: Sequence[ProviderEvent],
        sender_of: Callable[[str], Awaitable[str | None]],
    ) -> list[Suppression]:
        """Suppress the recipients a provider's webhook reports bounced or complained, for the
        account of the message (its sender, by ``sender_of(queue id)``); those that were new."""
        config = self.node.config
        if not config.suppression.enabled:
            return []
        added: list[Suppression] = []
        for event in events:
            if event.status not in (Status.BOUNCED, Status.COMPLAINED) or not event.recipient:
                continue
            kind = "complaint" if event.status is Status.COMPLAINED else "bounce"
            sender = await sender_of(event.mqd_id) if event.mqd_id else None
            account = account_for(config.accounts, sender) if sender else None
            item = Suppression(
                address=event.recipient,
                account=account.name if account is not None else "",
                kind=kind,
                reason=event.reply or f"{kind} reported by the provider",
                since=event.at,
                until=config.suppression.until(kind, event.at),
            )
            if self.node.guards.suppressions.add(item):
                added.append(item)
        if added:
            await self._save()
        return added

    async def _save(self) -> None:
        await self.node.guards.save(self.store)
