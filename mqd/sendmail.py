"""``mqd sendmail``: the sendmail command line, for PHP's ``sendmail_path``, cron and scripts.

Reads a message on stdin and drops it into the spool through the producer path, with the
envelope stated in leading X-Sender / X-Receiver lines. Supported options::

    -t            take recipients from To, Cc and Bcc (plus any given as arguments)
    -i, -oi       a line with a single "." does not end the message
    -f ADDR       envelope sender (also -fADDR, -r ADDR)
    -F NAME       full name for the From header when the message has none
    -o*, -B*, -bm, -od*, -v, -N*, -R*, -L*, -X*   accepted and ignored (sendmail compatibility)

Without ``-f`` the sender comes from the Sender or From header. Addresses without a domain
(cron writes "root") get ``[sendmail] qualify_domain`` appended, or are refused.
This module stays free of click so that the sendmail path starts fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formataddr
from typing import BinaryIO

from .envelope import address_problem, envelope_address, parse_message
from .errors import ConfigError, MessageParseError, MQDError
from .exitcodes import ExitCode
from .inject import envelope_lines, inject

__all__ = ["SendmailArgs", "main", "parse_args"]

USAGE = "usage: mqd sendmail [-t] [-i] [-f sender] [-F fullname] [recipient ...] < message"
HELP = f"""{USAGE}

Drop the message on standard input into mqd's spool (the daemon delivers it).

  -t          recipients from To, Cc and Bcc, plus any given as arguments
  -i, -oi     a line with a single "." does not end the message
  -f SENDER   envelope sender (also -fSENDER, -r SENDER); default: Sender or From header
  -F NAME     full name for the From header added when the message has none
  -C FILE     config file (like mqd --config)
  -o*, -O*, -B*, -bm, -od*, -v, -N*, -R*, -L*, -X*   accepted and ignored

Exit codes: 0 queued, 64 bad option, 65 unusable message, 78 config error,
73 or 75 the spool cannot be written."""
_IGNORED_PREFIXES = ("-o", "-O", "-B", "-od", "-N", "-R", "-L", "-X", "-v", "-m", "-e")
_IGNORED_WITH_VALUE = ("-N", "-R", "-L", "-X", "-B", "-O")


class UsageError(Exception):
    pass


@dataclass
class SendmailArgs:
    from_headers: bool = False
    ignore_dots: bool = False
    sender: str | None = None
    full_name: str | None = None
    recipients: list[str] = field(default_factory=list)
    config: str | None = None


def parse_args(argv: Sequence[str]) -> SendmailArgs:
    """Parse sendmail's options (raises UsageError on an unsupported one)."""
    args = SendmailArgs()
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        i += 1

        def value(flag: str, arg: str = arg) -> str:
            nonlocal i
            if len(arg) > len(flag):
                return arg[len(flag) :]
            if i >= len(items):
                raise UsageError(f"option {flag} needs a value")
            i += 1
            return items[i - 1]

        if arg == "--":
            args.recipients.extend(items[i:])
            break
        if not arg.startswith("-") or arg == "-":
            args.recipients.append(arg)
        elif arg == "-t":
            args.from_headers = True
        elif arg in ("-i", "-oi"):
            args.ignore_dots = True
        elif arg.startswith("-f") or arg.startswith("-r"):
            args.sender = value(arg[:2])
        elif arg.startswith("-F"):
            args.full_name = value("-F")
        elif arg.startswith("-C"):
            args.config = value("-C")
        elif arg in ("-bm", "-U") or arg.startswith(_IGNORED_PREFIXES):
            if arg in _IGNORED_WITH_VALUE:
                value(arg)
        elif arg.startswith("-b"):
            raise UsageError(f"{arg}: only -bm (read a message from standard input) is supported")
        else:
            raise UsageError(f"unknown option {arg}")
    args.recipients = [r.strip() for item in args.recipients for r in item.split(",") if r.strip()]
    return args


def read_message(stream: BinaryIO, ignore_dots: bool) -> bytes:
    """The message on ``stream``; without -i a line holding a single "." ends it."""
    if ignore_dots:
        return stream.read()
    lines = []
    for line in stream:
        if line.rstrip(b"\r\n") == b".":
            break
        lines.append(line)
    return b"".join(lines)


def build(args: SendmailArgs, raw: bytes, qualify_domain: str | None) -> bytes:
    """The spool file for ``raw``: envelope lines, a From header if missing, then the message.

    Raises MessageParseError for a message without recipients or a usable sender.
    """
    if not raw.strip():
        raise MessageParseError("the message on standard input is empty")
    header_end = _header_end(raw)
    parsed = None
    if args.from_headers or args.sender is None:
        # The sender is validated after qualification ("root" from cron becomes root@domain).
        parsed = parse_message(raw, require_sender=False, require_recipients=False)
    recipients = list(args.recipients)
    if args.from_headers and parsed is not None:
        recipients += list(parsed.recipients) + [a for a, _ in parsed.invalid_recipients]
    sender = args.sender if args.sender is not None else (parsed.sender if parsed else "")
    if not sender:
        raise MessageParseError("no sender: give one with -f or put a From header in the message")
    sender = _qualify(sender, qualify_domain, "sender")
    recipients = list(dict.fromkeys(_qualify(r, qualify_domain, "recipient") for r in recipients))
    if not recipients:
        raise MessageParseError("no recipients: give them as arguments or use -t")
    extra = b""
    if b"\nfrom:" not in b"\n" + raw[:header_end].lower():
        extra = f"From: {formataddr((args.full_name or '', sender))}\r\n".encode()
    return envelope_lines(sender, recipients) + extra + raw


def _qualify(address: str, domain: str | None, role: str) -> str:
    address = envelope_address(address)
    if address and "@" not in address:
        if not domain:
            raise MessageParseError(
                f"the {role} {address!r} has no domain; set [sendmail] qualify_domain in the "
                "config to qualify local names like 'root'"
            )
        address = f"{address}@{domain}"
    problem = address_problem(address)
    if problem:
        raise MessageParseError(f"the {role} {address!r} is not usable: {problem}")
    return address


def _header_end(raw: bytes) -> int:
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else len(raw)


def main(argv: Sequence[str]) -> int:
    """Run ``sendmail`` with ``argv`` (without the program name); returns the exit code."""
    from pathlib import Path

    from .config import load_config, locate_config

    if "--help" in argv:
        print(HELP)
        return ExitCode.OK
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"mqd sendmail: {exc}\n{USAGE}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        config = load_config(locate_config(Path(args.config) if args.config else None))
        data = build(
            args, read_message(sys.stdin.buffer, args.ignore_dots), config.sendmail.qualify_domain
        )
        inject(config.inject_spool, data)
    except ConfigError as exc:
        print(f"mqd sendmail: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except MessageParseError as exc:
        print(f"mqd sendmail: {exc}", file=sys.stderr)
        return ExitCode.DATAERR
    except PermissionError as exc:
        print(f"mqd sendmail: cannot write to the spool: {exc}", file=sys.stderr)
        return ExitCode.CANTCREAT
    except OSError as exc:
        print(f"mqd sendmail: cannot write to the spool: {exc}", file=sys.stderr)
        return ExitCode.TEMPFAIL
    except MQDError as exc:
        print(f"mqd sendmail: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    return ExitCode.OK
