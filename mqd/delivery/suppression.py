"""The suppression list: recipients mqd does not send to again, per account.

A recipient that bounced permanently for a bad address (``5.1.x``: no such mailbox, bad
domain) or whom a provider reports bounced or complained (its webhook) is suppressed for the
message's account ("" for mail no ``[[account]]`` claims), for ``suppression.bounce_for``
(30 days by default) or ``complaint_for`` (for good by default). A later message to it is not
sent to that recipient: the recipient ends as ``suppressed`` with the original reason, and the
sender gets no bounce for it (no bounce storm from a list that keeps mailing a dead address).

The list lives in memory and in the store's small state (``suppressions``), saved when it
changes: it survives restarts. On a store shared by a fleet (PostgreSQL) it is one list for the
fleet instead, in the database (``mqd.delivery.fleet``): the memory is then a cache that the
guards bring up to date every few seconds, and ``shared`` keeps the changes to write.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass

__all__ = ["CSV_FIELDS", "SUPPRESSION_STATE", "Suppression", "Suppressions", "from_csv", "to_csv"]

log = logging.getLogger("mqd.delivery")

#: The store's small-state name of the list.
SUPPRESSION_STATE = "suppressions"
#: The columns of ``mqd suppress export`` / ``import``.
CSV_FIELDS = ("address", "account", "kind", "reason", "since", "until")


@dataclass(frozen=True)
class Suppression:
    address: str
    #: The account it applies to ("": mail no [[account]] claims).
    account: str
    #: "bounce", "complaint" or "manual".
    kind: str
    #: Why: the bounce's reply, the provider's report, or the operator's note.
    reason: str
    since: float
    #: When it ends (Unix time); None: for good.
    until: float | None = None


def _key(account: str, address: str) -> tuple[str, str]:
    return account, address.strip().lower()


class Suppressions:
    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Suppression] = {}
        self.dirty = False
        #: Kept for the fleet's list: the changes made here and not written there yet.
        self.shared = False
        self._added: list[Suppression] = []
        self._removed: list[tuple[str, str | None]] = []

    def __len__(self) -> int:
        return len(self._items)

    def check(self, account: str | None, address: str, now: float) -> Suppression | None:
        """The suppression that stops mail of ``account`` to ``address`` now, or None."""
        key = _key(account or "", address)
        item = self._items.get(key)
        if item is None:
            return None
        if item.until is not None and item.until <= now:
            del self._items[key]  # lapsed
            self.dirty = True
            return None
        return item

    def add(self, item: Suppression) -> bool:
        """Add or renew ``item``; False when an equal or longer one is there already."""
        key = _key(item.account, item.address)
        old = self._items.get(key)
        if old is not None and (old.until is None or (item.until and old.until >= item.until)):
            return False
        self._items[key] = Suppression(**{**asdict(item), "address": key[1]})
        self.dirty = True
        if self.shared:
            self._added.append(self._items[key])
        return True

    def remove(self, address: str, account: str | None) -> list[Suppression]:
        """Remove ``address`` from ``account``'s list (None: from every account's)."""
        wanted = address.strip().lower()
        gone = [
            key
            for key in self._items
            if key[1] == wanted and (account is None or key[0] == account)
        ]
        removed = [self._items.pop(key) for key in gone]
        self.dirty = self.dirty or bool(removed)
        if self.shared:  # the fleet's list may have it though this node's cache does not yet
            self._removed.append((wanted, account))
        return removed

    def take_changes(self) -> tuple[list[Suppression], list[tuple[str, str | None]]]:
        """The additions and removals (address, account) made since the last call."""
        added, removed = self._added, self._removed
        self._added, self._removed = [], []
        return added, removed

    def keep_changes(self, added: list[Suppression], removed: list[tuple[str, str | None]]) -> None:
        """Changes ``take_changes`` gave that could not be written: again next time."""
        self._added[:0], self._removed[:0] = added, removed

    def merge(self, items: Iterable[Suppression], now: float) -> None:
        """Take the fleet's rows into the cache: an ended one leaves it."""
        for item in items:
            key = _key(item.account, item.address)
            if item.until is not None and item.until <= now:
                self._items.pop(key, None)
            else:
                self._items[key] = item

    def items(self, now: float, account: str | None = None) -> list[Suppression]:
        """Every suppression in force, newest first (of ``account`` only, if given)."""
        live = [
            item
            for item in self._items.values()
            if (item.until is None or item.until > now)
            and (account is None or item.account == account)
        ]
        return sorted(live, key=lambda item: item.since, reverse=True)

    # -- saved form -------------------------------------------------------------------------------

    def dump(self) -> bytes:
        self.dirty = False
        items = [asdict(item) for item in self._items.values()]
        return json.dumps({"version": 1, "items": items}, sort_keys=True).encode()

    def load(self, raw: bytes) -> None:
        try:
            items = json.loads(raw)["items"]
            loaded = [Suppression(**item) for item in items]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the saved suppression list: not valid (%s)", exc)
            return
        self._items = {_key(item.account, item.address): item for item in loaded}


def to_csv(items: Iterable[Suppression]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for item in items:
        row = asdict(item)
        row["until"] = "" if item.until is None else item.until
        writer.writerow(row)
    return out.getvalue()


def from_csv(text: str, now: float) -> list[Suppression]:
    """Suppressions from a CSV with an ``address`` column (the others optional: ``account``
    "", ``kind`` "manual", ``reason`` "imported", ``since`` now, ``until`` empty for good).
    ValueError naming the line for a row without an address or with a bad number."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "address" not in reader.fieldnames:
        raise ValueError("the CSV needs a header line with an 'address' column")
    items = []
    for line, row in enumerate(reader, start=2):
        address = (row.get("address") or "").strip()
        if "@" not in address:
            raise ValueError(f"line {line}: {address!r} is not an address")
        try:
            since = float(row.get("since") or now)
            until = float(row["until"]) if row.get("until") else None
        except ValueError as exc:
            raise ValueError(f"line {line}: {exc}") from None
        items.append(
            Suppression(
                address=address,
                account=(row.get("account") or "").strip(),
                kind=(row.get("kind") or "manual").strip(),
                reason=(row.get("reason") or "imported").strip(),
                since=since,
                until=until,
            )
        )
    return items
