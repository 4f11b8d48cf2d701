"""Submission from the command line: ``mqd send`` composes a message, ``mqd sendmail`` is the
sendmail-compatible entry (the fast path in ``mqd.__main__`` skips click for it)."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import click

from mqd.cli.shared import State, pass_state
from mqd.config.units import parse_duration
from mqd.errors import MessageParseError
from mqd.exitcodes import ExitCode
from mqd.message.sendat import parse_send_at

__all__ = ["send", "sendmail"]

_V = TypeVar("_V", str, tuple[str, ...])


def _one_line(ctx: click.Context, param: click.Parameter, value: _V) -> _V:
    """``value`` (one string, or a tuple of them for a repeated option) unchanged; a usage
    error (exit 64) naming the option when one holds CR, LF or NUL. These values become header
    fields: a line break would end the field and start another (a Bcc, say), and the email
    package refuses them with a traceback."""
    for item in (value,) if isinstance(value, str) else value:
        if any(c in item for c in "\r\n\x00"):
            raise click.BadParameter(
                f"{item!r} holds CR, LF or NUL, which would end the header line: "
                "give it on one line",
                ctx,
                param,
            )
    return value


def _traceparent(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A valid W3C ``traceparent``, or a usage error (exit 64) naming the option."""
    from mqd.message.tracecontext import parse

    if not value:
        return None
    if parse(value) is None:
        raise click.BadParameter(
            f"{value!r} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)", ctx, param
        )
    return value.strip()


def _resolve_at(value: str, now: float, horizon: float) -> str:
    """``mqd send --at``: ``+DURATION`` (``+90m``, ``+2d``) or a date, as the header to write
    (ISO 8601 with this machine's offset). A date without an offset is this machine's local
    time: the command runs here. ValueError, with the reason, for anything else."""
    text = value.strip()
    if text.startswith("+"):
        when = now + parse_duration(text[1:])
    else:
        try:
            when = parse_send_at(text)
        except MessageParseError as exc:
            try:
                local = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(str(exc).replace("X-Mqd-Send-At: ", "")) from None
            if local.tzinfo is not None:
                raise ValueError(str(exc)) from None
            when = local.astimezone().timestamp()  # naive: this machine's local time
    if when > now + horizon:
        raise ValueError(
            f"{text!r} is more than {horizon / 86400:g} days ahead (queue.send_later_horizon)"
        )
    return datetime.fromtimestamp(when).astimezone().isoformat(timespec="seconds")


@click.command()
@click.option(
    "--from",
    "sender",
    required=True,
    callback=_one_line,
    help="Sender address (From and envelope).",
)
@click.option(
    "--to",
    "to",
    multiple=True,
    required=True,
    callback=_one_line,
    help="Recipient; repeat for more.",
)
@click.option(
    "--cc", "cc", multiple=True, callback=_one_line, help="Copy recipient; repeat for more."
)
@click.option("--subject", default="", callback=_one_line, help="Subject line.")
@click.option(
    "--body",
    default=None,
    help="Body text. Without it the body is read from standard input (if not a terminal).",
)
@click.option(
    "--attach",
    "attachments",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File to attach; repeat for more.",
)
@click.option(
    "--count",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Queue this many copies (each with its own Message-ID), for load tests.",
)
@click.option(
    "--spool",
    type=click.Path(file_okay=False, path_type=Path),
    help="Spool directory to write into, one of the config's [[spool]] paths. "
    "Default: [sendmail] spool, else the first spool.",
)
@click.option(
    "--at",
    "send_at",
    default=None,
    metavar="TIME",
    help="Send later: '+90m', '+2d', or a date ('2026-12-24T09:00', this machine's time "
    "unless it has an offset; or an RFC 5322 date). Written as X-Mqd-Send-At; the message "
    "waits in the queue as 'scheduled' until then.",
)
@click.option(
    "--traceparent",
    envvar="TRACEPARENT",
    default=None,
    callback=_traceparent,
    help="A W3C traceparent (default: $TRACEPARENT): the message's trace continues it "
    "(docs/tracing.md).",
)
@click.option(
    "--no-progress",
    is_flag=True,
    help="With --count: no progress bar (one is drawn only when stderr is a terminal).",
)
@pass_state
def send(
    state: State,
    sender: str,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    subject: str,
    body: str | None,
    attachments: tuple[Path, ...],
    count: int,
    spool: Path | None,
    send_at: str | None,
    traceparent: str | None,
    no_progress: bool,
) -> None:
    """Compose a message and drop it into a spool (the daemon delivers it).

    The sender is checked against the spool's allow-lists first, as the daemon would check
    it: a refused sender is an error (exit 77) and nothing is written."""
    from mqd.cli.progress import counted, maybe_bar
    from mqd.config.senders import SenderRules
    from mqd.errors import PolicyError
    from mqd.message.compose import compose, with_new_message_id
    from mqd.message.headers import envelope_address, read_envelope
    from mqd.producer.inject import inject_many

    config = state.load()
    spool_config = config.spool_at(spool or config.inject_spool)
    if spool_config is None:  # no daemon reads it: refused, and nothing is created
        configured = ", ".join(str(s.path) for s in config.spools)
        source = config.source or "the embedded defaults"
        click.echo(
            f"mqd: error: {spool} is not a configured spool, so no daemon would read it; "
            f"the spools of {source}: {configured}",
            err=True,
        )
        sys.exit(ExitCode.USAGE)
    target = spool_config.path
    if body is None:
        body = "" if sys.stdin.isatty() else sys.stdin.read()
    header = None
    if send_at is not None:
        try:
            header = _resolve_at(send_at, time.time(), config.queue.send_later_horizon)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--at'") from None
    message = compose(
        sender=sender,
        to=to,
        cc=cc,
        subject=subject,
        body=body,
        attachments=attachments,
        send_at=header,
        traceparent=traceparent,
    )
    # The envelope sender the daemon will read (From, as it has no X-Sender line), and From.
    envelope, _, _, headers = read_envelope(message, require_recipients=False)
    refusal = SenderRules.from_config(config, spool_config).refusal(
        envelope or envelope_address(sender), headers.get("from"), headers.get("sender")
    )
    if refusal:
        source = config.source or "the embedded defaults"
        raise PolicyError(f"{refusal}; nothing was queued (from config {source})")
    domain = sender.rpartition("@")[2]
    copies = (message if i == 0 else with_new_message_id(message, domain) for i in range(count))
    try:
        with maybe_bar(count if count > 1 else 0, "queueing", sys.stderr, not no_progress) as bar:
            written = inject_many(target, counted(copies, bar))
    except OSError as exc:
        click.echo(f"mqd: error: cannot write into the spool {target}: {exc}", err=True)
        sys.exit(ExitCode.CANTCREAT)
    if header is not None:
        click.echo(f"to be sent at {header}")
    if count == 1:
        click.echo(f"queued {written[0]}")
    else:
        click.echo(f"queued {len(written)} messages in {target}")


@click.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": ["--help"],
    },
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_state
def sendmail(state: State, args: tuple[str, ...]) -> None:
    """sendmail-compatible submission: message on stdin.

    \b
    Options: -t (recipients from the headers), -i / -oi (a lone "." does not end
    the message), -f SENDER, -F "Full Name", recipients as arguments. Usable as
    PHP's sendmail_path ("mqd sendmail -t -i") and from cron. A symlink named
    'sendmail' pointing at mqd behaves the same.
    """
    import mqd.producer.sendmail as sendmail_module

    argv = list(args)
    if state.config_path is not None:
        argv = ["-C", str(state.config_path), *argv]
    sys.exit(sendmail_module.main(argv))
