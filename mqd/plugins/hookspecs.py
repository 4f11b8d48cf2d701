"""The hooks a plugin may implement. Each docstring is the contract, including result policy.

Implement them with ``@mqd.hookimpl`` in a module registered under the entry-point group
``mqd``. A hook implementation that raises is logged and skipped (it never stops the others);
``mqd_check_policy`` fails closed instead (the message is refused).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from mqd.config.schema import Config, SpoolConfig
    from mqd.events import Event
    from mqd.intake.source import RegisterSource
    from mqd.message.envelope import ParsedMessage
    from mqd.queue.entry import QueueEntry, RecipientState
    from mqd.relays.base import Relay

__all__ = ["RegisterRelay", "hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("mqd")
hookimpl = pluggy.HookimplMarker("mqd")

#: ``register(plugin_name, relay_class)``: what ``mqd_register_relays`` receives. The class may
#: be given as a ``"module:Class"`` path, imported only when a config uses the relay.
RegisterRelay = Callable[[str, "type[Relay] | str"], None]


@hookspec
def mqd_register_relays(register: RegisterRelay) -> None:
    """Register relay classes: ``register("smtp", SMTPRelay)``, or by path,
    ``register("ses", "mqd_ses.relay:SESRelay")``: then the module is imported only when a
    config uses the relay, and a daemon that does not starts without it (an HTTP client and a
    cloud SDK cost a start hundreds of milliseconds).

    The name is what a config's ``plugin = "..."`` selects. Every implementation is called;
    registering a taken name is an error reported against the plugin loaded later (the core
    is loaded first, so its names cannot be taken over).
    """


@hookspec
def mqd_register_sources(register: RegisterSource) -> None:
    """Register intake source classes (``mqd.intake.source.Source``) by kind: a config's
    ``[[source]]`` table with ``kind = "sqs"`` is built by the class registered as ``"sqs"``
    (the core's ``smtpd`` has its own ``[[smtpd]]`` tables):
    ``register("smtpd", "mqd.intake.smtpd.source:SMTPSource")``.
    As with relays, a ``"module:Class"`` path is imported only when a config has such a table.

    Every implementation is called; registering a taken name is an error reported against the
    plugin loaded later (the core's ``smtpd`` cannot be taken over).
    """


@hookspec
def mqd_check_policy(
    message: ParsedMessage, spool: SpoolConfig, relay_name: str, config: Config
) -> str | None:
    """Decide whether a message taken from ``spool`` may be relayed. For a message a source
    hands over (``[[smtpd]]``), ``spool`` is that source's ``SourceConfig`` (a ``SpoolConfig``),
    and the hook is asked first with the envelope sender alone (no recipients, no headers).

    Return a reason to refuse it, or None to have no objection. The first refusal wins (the
    rest are not asked), so a plugin can add restrictions but never lift the core's allow-list.
    A refused message goes to failed/ with the reason and gets no bounce.
    """


@hookspec(firstresult=True)
def mqd_build_bounce(
    entry: QueueEntry, failures: list[RecipientState], original: bytes, config: Config
) -> bytes | None:
    """Build the delivery status notification for ``failures`` of ``entry``.

    Return the complete message (bytes; it is sent from ``<>`` to ``entry.sender``) or None to
    leave it to the next implementation. First result wins; the core's RFC 3464 builder runs
    last. Not called for the null sender or for a message that is itself a report.
    """


@hookspec
def mqd_track_event(event: Event) -> None:
    """Observe an event: every state change of a message, in order.

    ``event`` is one of the frozen classes of ``mqd.events`` (exported by ``mqd``): ``Claimed``,
    ``Rejected``, ``Queued``, then for each attempt ``Attempted`` (the relays it called) and per
    recipient ``Delivered``, ``Deferred`` or ``Bounced``, and ``Completed``, ``Failed`` or
    ``Deleted``. Each has ``kind``, ``message_id`` (mqd's queue id)
    and ``time``, and its kind's typed fields; tell them apart with ``isinstance`` or ``kind``.

    Every implementation is called; one that raises is logged and skipped. Called on the
    daemon's event loop: return quickly and do not block.
    """
