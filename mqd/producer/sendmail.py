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

It runs once per message, so it loads as little as it can (tests/test_imports.py holds it to
that): no click, asyncio, email.policy or pluggy, and not ``mqd.config.load``, whose dataclasses
alone cost more than a bare interpreter's start; not even ``__future__`` (its import costs ~0.2
ms): the modules of this path quote the annotations that name type-checking-only imports. It
reads the three keys it needs from the TOML file itself (``[sendmail] spool`` and
``qualify_domain``, the first ``[[spool]] path``); the daemon and ``mqd config check`` validate
the rest. When anything about those keys is not as expected, the full config loader runs, so
that its error (naming the key and the fix) is the one shown.
"""

import os
import sys

from mqd.errors import ConfigError, MessageParseError, MQDError
from mqd.message.headers import address_problem, envelope_address, read_envelope
from mqd.producer.inject import envelope_lines, write_to_spool
from mqd.producer.tomlsubset import read_subset

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know it)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, BinaryIO

__all__ = ["SendmailArgs", "main", "parse_args"]


class ExitCode:
    """``mqd.exitcodes.ExitCode``'s values as plain ints: that one is an IntEnum, and importing
    ``enum`` costs this path a few ms (tests/test_perf_sendmail.py keeps the two equal)."""

    OK = 0
    FAILURE = 1
    USAGE = 64
    DATAERR = 65
    CANTCREAT = 73
    TEMPFAIL = 75
    CONFIG = 78


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


def build(args: SendmailArgs, raw: bytes, qualify_domain: str | None) -> bytes:
    """The spool file for ``raw``: envelope lines, a From header if missing, then the message.

    Raises MessageParseError for a message without recipients or a usable sender.
    """
    if not raw.strip():
        raise MessageParseError("the message on standard input is empty")
    header_end = _header_end(raw)
    found_sender = ""
    found_rcpts: tuple[str, ...] = ()
    invalid: tuple[tuple[str, str], ...] = ()
    if args.from_headers or args.sender is None:
        # The sender is validated after qualification ("root" from cron becomes root@domain).
        found_sender, found_rcpts, invalid, _ = read_envelope(
            raw, require_sender=False, require_recipients=False
        )
    recipients = list(args.recipients)
    if args.from_headers:
        recipients += list(found_rcpts) + [a for a, _ in invalid]
    sender = args.sender if args.sender is not None else found_sender
    if not sender:
        raise MessageParseError("no sender: give one with -f or put a From header in the message")
    sender = _qualify(sender, qualify_domain, "sender")
    recipients = list(dict.fromkeys(_qualify(r, qualify_domain, "recipient") for r in recipients))
    if not recipients:
        raise MessageParseError("no recipients: give them as arguments or use -t")
    extra = b""
    if b"\nfrom:" not in b"\n" + raw[:header_end].lower():
        from email.utils import formataddr  # only for a message without From

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


def main(argv: "Sequence[str]") -> int:
    """Run ``sendmail`` with ``argv`` (without the program name); returns the exit code."""
    if "--help" in argv:
        print(HELP)
        return ExitCode.OK
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"mqd sendmail: {exc}\n{USAGE}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        spool, qualify_domain = settings(args.config)
        data = build(args, read_message(sys.stdin.buffer, args.ignore_dots), qualify_domain)
        write_to_spool(spool, [data])
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


# -- the config, read lightly ---------------------------------------------------------------

_CONFIG_ENV = "MQD_CONFIG"  # mqd.config.schema.CONFIG_ENV
_SYSTEM_CONFIG = "/etc/mqd/mqd.toml"  # mqd.config.paths.SYSTEM_CONFIG


class _FullConfigNeeded(Exception):
    """The light reader met something it does not check itself: let mqd.config.load say what."""


def settings(config: str | None) -> tuple[str, str | None]:
    """The spool to write into and ``[sendmail] qualify_domain``, for the config named by
    ``-C`` (None: ``$MQD_CONFIG``, then the platform's default, as
    ``mqd.config.load.locate_config``).

    Raises ConfigError as ``mqd.config.load.load_config`` would for these keys; tests/
    test_perf_sendmail.py holds both readers to the same answers.
    """
    try:
        return _light_settings(config)
    except _FullConfigNeeded:
        from pathlib import Path

        from mqd.config.load import load_config, locate_config

        loaded = load_config(locate_config(Path(config) if config is not None else None))
        return os.fspath(loaded.inject_spool), loaded.sendmail.qualify_domain


def _light_settings(config: str | None) -> tuple[str, str | None]:
    path = _locate(config)
    if path is None:  # embedded defaults: rare outside development, so no shortcut
        raise _FullConfigNeeded
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        data = read_subset(raw.decode("utf-8"))
        if data is None:  # beyond the subset the light reader knows: the real parser
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):  # TOMLDecodeError is a ValueError
        raise _FullConfigNeeded from None
    base = os.path.dirname(path)
    sendmail = _table(data.get("sendmail", {}))
    if not set(sendmail) <= {"spool", "qualify_domain"}:
        raise _FullConfigNeeded  # a misspelt key: the full loader names it
    domain = sendmail.get("qualify_domain")
    if domain is not None and (not isinstance(domain, str) or not domain or "@" in domain):
        raise _FullConfigNeeded
    spools = data.get("spool")
    if isinstance(spools, dict):
        spools = [spools]
    if not isinstance(spools, list) or not spools:
        raise _FullConfigNeeded
    paths = [_path(_table(spool).get("path"), base) for spool in spools]
    if "spool" in sendmail:
        chosen = _path(sendmail["spool"], base)
        if os.path.abspath(chosen) not in map(os.path.abspath, paths):
            raise _FullConfigNeeded
        return chosen, domain
    return paths[0], domain


def _locate(config: str | None) -> str | None:
    if config is not None:
        return config if os.path.isfile(config) else _raise_full()
    from_env = os.environ.get(_CONFIG_ENV)
    if from_env:
        return from_env if os.path.isfile(from_env) else _raise_full()
    default = _default_config()
    if os.path.isfile(default):
        return default
    if default != _SYSTEM_CONFIG and os.name == "posix" and os.path.isfile(_SYSTEM_CONFIG):
        return _SYSTEM_CONFIG
    return None


def _default_config() -> str:
    """``mqd.config.paths.default_paths().config_file``, without importing dataclasses for it."""
    if sys.platform != "darwin" and hasattr(os, "geteuid") and os.geteuid() == 0:
        return _SYSTEM_CONFIG
    import platformdirs

    return os.path.join(platformdirs.user_config_dir("mqd", appauthor=False), "mqd.toml")


def _table(value: "Any") -> "dict[str, Any]":
    if not isinstance(value, dict):
        raise _FullConfigNeeded
    return value


def _path(value: "Any", base: str) -> str:
    """As ``Options.filepath``: ``~`` expanded, relative to the config file's directory."""
    if not isinstance(value, str):
        raise _FullConfigNeeded
    value = os.path.expanduser(value)
    return value if os.path.isabs(value) else os.path.join(base, value)


def _raise_full() -> str:
    raise _FullConfigNeeded
