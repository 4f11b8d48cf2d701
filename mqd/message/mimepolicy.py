"""The email package's policy for the messages mqd composes (``mqd send``, the submit API's
JSON): its default policy, with each header class made once.

The standard ``HeaderRegistry`` makes a new class (``type(...)``) each time a header is set or
counted; composing one short message made a dozen, a quarter of the submit API's CPU.
"""

from __future__ import annotations

from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry
from typing import Any

__all__ = ["COMPOSING", "SENDING"]


class _MadeOnce(HeaderRegistry):
    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> Any:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made

    def map_to_type(self, name: str, cls: Any) -> None:
        super().map_to_type(name, cls)
        self._made.pop(name.lower(), None)


#: For ``EmailMessage(policy=COMPOSING)``.
COMPOSING = policy.default.clone(header_factory=_MadeOnce())
#: For ``as_bytes(policy=SENDING)``: CRLF line endings.
SENDING = COMPOSING.clone(linesep="\r\n")
