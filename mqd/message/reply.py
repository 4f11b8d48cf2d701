"""A relay's answer for one recipient (``Reply``) and what it means for the message (``Outcome``).

Relays answer in SMTP's terms whatever their protocol; ``mqd.message.classify`` turns a reply into
an outcome, in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Outcome", "Reply"]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


class Outcome(StrEnum):
    """What happened to one recipient."""

    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Reply:
    """An SMTP-style reply: a code, the text, and the enhanced status code (RFC 3463) if any.

    HTTP relays answer in the same terms (e.g. 250 for accepted, 554 for a rejected message).
    """

    code: int
    message: str = ""
    enhanced: str | None = None

    @classmethod
    def parse(cls, code: int, message: str) -> Reply:
        """A Reply whose enhanced status code is read from the start of ``message``."""
        text = " ".join(message.split())
        match = _ENHANCED.match(text)
        if match:
            return cls(code, text[match.end() :].strip(), match.group(0))
        return cls(code, text)

    @property
    def status(self) -> str:
        """The enhanced status code, or one derived from the basic code class (RFC 3463).

        When the enhanced code's class disagrees with the basic code, the class is corrected
        to match the code (which decides the outcome), keeping the detail: 550 + 4.2.2 -> 5.2.2.
        """
        klass = {2: "2", 4: "4", 5: "5"}.get(self.code // 100, "4")
        if self.enhanced:
            return klass + self.enhanced[1:]
        return f"{klass}.0.0"

    def __str__(self) -> str:
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.message:
            parts.append(self.message)
        return " ".join(parts)
