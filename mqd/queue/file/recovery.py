"""What a file store finds when it opens its directory (after a clean stop or a crash).

Commit points: a body in ``messages/``, fsynced with its directory, is an accepted message (the
body is the whole record of a message never attempted: it is listed unread, and its entry is
rebuilt from it when its turn comes, as at intake); a state file records every change after
that; unlinking the body finishes the entry (its state file goes right after: a state file whose
body is gone is cleaned up here).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from mqd.queue.entry import DSN_SOURCE, QueueEntry
from mqd.queue.file.layout import Layout

__all__ = ["Recovered", "recover"]

log = logging.getLogger("mqd.queue")


@dataclass
class Recovered:
    #: Entries with a state file.
    entries: list[QueueEntry] = field(default_factory=list)
    #: Bodies with no state file, oldest first: (source, id).
    unread: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def recover(layout: Layout, failed_dir: str) -> Recovered:
    """Read ``layout``'s state files and list its bodies (blocking)."""
    found = Recovered()
    accepted: set[str] = set()
    for path in sorted(layout.state_dir.glob("*.json")):
        entry_id = path.stem
        try:
            entry = QueueEntry.from_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            target = layout.quarantine(path, f"unreadable state file: {exc}")
            log.error("state file %s is unreadable and was moved to %s: %s", path, target, exc)
            found.notes.append(f"{entry_id}: state file set aside in quarantine ({exc})")
            continue
        if not os.path.exists(layout.body_path(entry.source, entry.id)):
            path.unlink()
            if os.path.exists(os.path.join(failed_dir, f"{entry_id}.eml")):
                found.notes.append(f"{entry_id}: finished moving to failed/")
            else:
                found.notes.append(f"{entry_id}: was finished before the restart")
            continue
        accepted.add(entry_id)
        found.entries.append(entry)
    for stray in layout.state_dir.glob(".*.tmp"):
        stray.unlink()  # a state write interrupted before its rename: the old state stands
    for source_dir in sorted(p for p in layout.messages_dir.iterdir() if p.is_dir()):
        # Sorted as names (ids sort by time): Path comparisons cost seconds for 100,000.
        for name in sorted(os.listdir(source_dir)):
            if name.startswith("."):
                os.unlink(os.path.join(source_dir, name))  # an interrupted write
            elif name.endswith(".eml") and name[:-4] not in accepted:
                if source_dir.name == DSN_SOURCE:
                    # Its entry was never written, so the bounced message has not recorded it
                    # either and will generate it again.
                    os.unlink(os.path.join(source_dir, name))
                else:
                    found.unread.append((source_dir.name, name[:-4]))
    found.unread.sort(key=lambda item: item[1])
    _note_queued_bounces(found)
    return found


def _note_queued_bounces(found: Recovered) -> None:
    """A crash came after an entry's DSN was queued and before the entry noted it: note it now
    rather than queue a second DSN (the DSN's id derives from the entry's)."""
    ids = {entry.id for entry in found.entries}
    for entry in found.entries:
        if entry.unnotified_failures and f"{entry.id}b{entry.bounces}" in ids:
            for failure in entry.unnotified_failures:
                failure.notified = True
            entry.bounces += 1
            found.notes.append(f"{entry.id}'s bounce was already queued")
