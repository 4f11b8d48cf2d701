"""``mqd sendmail``: the sendmail command line, for PHP's ``sendmail_path``, cron and scripts.

Reads a message on stdin and drops it into the spool through the producer path, with the
envelope stated in leading X-Sender / X-Receiver lines. Supported options::

    -t            take recipients from To, Cc and Bcc (plus any given as arguments)
    -i, -oi       a line with a single "." does not end the message
    -f ADDR       envelope sender (also -fADDR, -r ADDR)
    -F NAME       full name for the From header when the message has none
    -o*, -B*, -bm, -od*, -v, -N*, -R*, -L*, -X*   accepted and ignored (sendmail compatibility)

Without ``-f`` the sender comes from the Sender or From header; without those, it is the
effective user's login name at ``[sendmail] qualify_domain`` (default ``queue.hostname``), as
Postfix's sendmail does. Addresses without a domain (cron writes "root") get
``[sendmail] qualify_domain`` appended, or are refused. Every sender is checked against the
spool's allow-lists before anything is written.

It runs once per message, so it loads as little as it can (tests/test_imports.py holds the
launcher to that): no click, asyncio, email.policy or pluggy, no TOML reader and not
``mqd.config.load``, whose dataclasses alone cost more than a bare interpreter's start; not even
``__future__`` (its import costs ~0.2 ms): the modules of this path quote the annotations that
name type-checking-only imports. What it needs from the config (the spool, the qualify domain,
the sender policy) is written into the launcher by ``mqd install-sendmail``, or read in full
(``mqd.producer.settings``). It checks the sender policy before it writes, as the daemon would.
"""

import sys

from mqd.errors import ConfigError, MessageParseError, MQDError, PolicyError
from mqd.exitcodes import ExitCode
from mqd.message.headers import (
    address_problem,
    envelope_address,
    read_envelope,
    split_header,
    unfold,
)
from mqd.producer.inject import envelope_lines, write_to_spool
from mqd.producer.settings import settings

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know it)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, BinaryIO

    from mqd.config.senders import SenderRules

__all__ = ["SendmailArgs", "main", "parse_args"]


USAGE = "usage: mqd sendmail [-t] [-i] [-f sender] [-F fullname] [recipient ...] < message"
HELP = f"""{USAGE}

Drop the message on standard input into mqd's spool (the daemon delivers it).

  -t          recipients from To, Cc and Bcc, plus any given as arguments
  -i, -oi     a line with a single "." does not end the message
  -f SENDER   envelope sender (also -fSENDER, -r SENDER); default: Sender or From
              header, else your login name at qualify_domain (or the host name)
  -F NAME     full name for the From header added when the message has none
  -C FILE     config file (like mqd --config)
  -o*, -O*, -B*, -bm, -od*, -v, -N*, -R*, -L*, -X*   accepted and ignored

Exit codes: 0 queued, 64 bad option, 65 unusable message, 77 sender not allowed,
78 config error, 73 or 75 the spool cannot be written."""
_IGNORED_PREFIXES = ("-o", "-O", "-B", "-od", "-N", "-R", "-L", "-X", "-v", "-m", "-e")
_IGNORED_WITH_VALUE = ("-N", "-R", "-L", "-X", "-B", "-O")


class UsageError(Exception):
    pass


class SendmailArgs:
    """The parsed command line (a plain class: a dataclass costs the import of ``dataclasses``)."""

    __slots__ = ("config", "from_headers", "full_name", "ignore_dots", "recipients", "sender")

    def __init__(
        self,
        *,
        from_headers: bool = False,
        ignore_dots: bool = False,
        sender: str | None = None,
        full_name: str | None = None,
        recipients: list[str] | None = None,
        config: str | None = None,
    ) -> None:
        self.from_headers = from_headers
        self.ignore_dots = ignore_dots
        self.sender = sender
        self.full_name = full_name
        self.recipients: list[str] = [] if recipients is None else recipients
        self.config = config

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SendmailArgs):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"SendmailArgs({fields})"


def parse_args(argv: "Sequence[str]") -> SendmailArgs:
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


def read_message(stream: "BinaryIO", ignore_dots: bool) -> bytes:
    """The message on ``stream``; without -i a line holding a single "." ends it."""
    if ignore_dots:
        return stream.read()
    lines = []
    for line in stream:
        if line.rstrip(b"\r\n") == b".":
            break
        lines.append(line)
    return b"".join(lines)


def build(
    args: SendmailArgs,
    raw: bytes,
    qualify_domain: str | None,
    rules: "SenderRules | None" = None,
    origin: str | None = None,
) -> bytes:
    """The spool file for ``raw``: envelope lines, a From header if missing, then the message.

    Without ``-f`` and without a sender in the headers (mail, mailx and many scripts), the
    sender is the effective user's login name at ``origin`` (default ``qualify_domain``), as
    Postfix's, exim's and nullmailer's sendmail do.

    Raises MessageParseError for a message without recipients or a usable sender, and
    PolicyError when ``rules`` (the spool's sender policy) refuse its sender or From.
    """
    if not raw.strip():
        raise MessageParseError("the message on standard input is empty")
    header_end = _header_end(raw)
    # The sender is validated after qualification ("root" from cron becomes root@domain).
    found_sender, found_rcpts, invalid, headers = read_envelope(
        raw, require_sender=False, require_recipients=False
    )
    recipients = list(args.recipients)
    if args.from_headers:
        recipients += list(found_rcpts) + [a for a, _ in invalid]
    sender = args.sender if args.sender is not None else found_sender
    if not sender and args.sender is None:
        sender = _login_sender(origin or qualify_domain)
    if not sender:
        raise MessageParseError("no sender: give one with -f or put a From header in the message")
    sender = _qualify(sender, qualify_domain, "sender")
    recipients = list(dict.fromkeys(_qualify(r, qualify_domain, "recipient") for r in recipients))
    if not recipients:
        raise MessageParseError("no recipients: give them as arguments or use -t")
    has_from = b"\nfrom:" in b"\n" + raw[:header_end].lower()
    if has_from and qualify_domain:  # cron's "From: root (Cron Daemon)", as Postfix does
        raw = _qualify_from(raw, qualify_domain)
        headers = read_envelope(raw, require_sender=False, require_recipients=False)[3]
    if rules is not None:
        # As the daemon would, now, while the caller waits: the From added below is the sender.
        refusal = rules.refusal(
            sender, headers.get("from", sender) if has_from else sender, headers.get("sender")
        )
        if refusal:
            raise PolicyError(f"{refusal}; nothing was queued")
    extra = b""
    if not has_from:  # as Postfix: From is the envelope sender (with -F's name)
        value = sender
        if args.full_name:
            from email.utils import formataddr  # only for a name to quote (it costs ~10 ms)

            value = formataddr((args.full_name, sender))
        extra = f"From: {value}\r\n".encode()
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


def _login_sender(domain: str | None) -> str:
    """The effective user's login name at ``domain``: the user whose rights write the spool.
    Not ``os.getlogin()`` (the terminal's login: none under cron, PHP-FPM or systemd, and the
    one who logged in rather than the one ``su``/``sudo`` runs as) nor ``$LOGNAME``/``$USER``
    (whatever the caller's environment says, unset for daemons, kept by some ``sudo``)."""
    import os

    try:
        import pwd  # built in, cheap; only for mail without any sender

        uid = os.geteuid()
        name = pwd.getpwuid(uid).pw_name
    except ImportError:  # Windows: no password database, no effective user
        raise MessageParseError(
            "no sender: give one with -f or put a From header in the message"
        ) from None
    except KeyError:
        raise MessageParseError(
            f"no sender: give one with -f or put a From header in the message (the user id "
            f"{uid} has no name in the password database to send as)"
        ) from None
    if not domain:
        raise MessageParseError(
            f"no sender: give one with -f or put a From header in the message, or set "
            f"[sendmail] qualify_domain in the config to send as {name}@<qualify_domain>"
        )
    return f"{name}@{domain}"


def _qualify_from(raw: bytes, domain: str) -> bytes:
    """``raw`` with its From header's address qualified with ``domain`` when that header is one
    local name alone (``root``, ``root (Cron Daemon)``, ``Cron Daemon <root>``: what cron
    writes), as Postfix appends ``@$myorigin``; else ``raw`` unchanged. The daemon reads From
    strictly, so an unqualified one would be refused (``check_from``)."""
    fields, _ = split_header(raw)
    froms = [i for i, (name, _) in enumerate(fields) if name.lower() == b"from"]
    if len(froms) != 1:
        return raw
    index = froms[0]
    line = fields[index][1]
    value = unfold(line).strip()
    lt, gt = value.rfind("<"), value.rfind(">")
    if 0 <= lt < gt and not value[gt + 1 :].strip():  # Name <root>
        local = value[lt + 1 : gt].strip()
        qualified = f"{value[: lt + 1]}{local}@{domain}{value[gt:]}"
    else:  # root, or root (comment)
        local, paren, comment = value.partition("(")
        local = local.strip()
        qualified = f"{local}@{domain}" + (f" ({comment}" if paren else "")
        if paren and not comment.rstrip().endswith(")"):
            return raw
    if not local or local.startswith(".") or local.endswith(".") or local.strip(_ATEXT):
        return raw  # an address already, or not a plain local name: left to the policy
    start = sum(len(field) for _, field in fields[:index])
    ending = b"\r\n" if line.endswith(b"\r\n") else b"\n"
    name = line[: line.index(b":")]
    new_line = name + b": " + qualified.encode("utf-8") + ending
    return raw[:start] + new_line + raw[start + len(line) :]


#: The characters of an unquoted local part (RFC 5322 atext, and the dot).
_ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~."


def _header_end(raw: bytes) -> int:
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else len(raw)


def main(argv: "Sequence[str]", baked: "Mapping[str, Any] | None" = None) -> int:
    """Run ``sendmail`` with ``argv`` (without the program name); returns the exit code.

    ``baked``: what ``mqd install-sendmail`` wrote into the launcher (``Settings.to_data``)."""
    if "--help" in argv:
        print(HELP)
        return ExitCode.OK
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"mqd sendmail: {exc}\n{USAGE}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        found = settings(args.config, baked)
        raw = read_message(sys.stdin.buffer, args.ignore_dots)
        try:
            data = build(args, raw, found.qualify_domain, found.rules, found.origin)
        except PolicyError as exc:
            print(f"mqd sendmail: {exc} (from {found.source})", file=sys.stderr)
            return ExitCode.NOPERM
        write_to_spool(found.spool, [data])
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
