"""The few string keys ``mqd sendmail`` needs from a config file, read without ``tomllib``.

``mqd sendmail`` runs once per message. Importing ``tomllib`` (with ``re``, ``datetime`` and
``string``) costs more than a bare interpreter's start, for three keys: ``[sendmail] spool``,
``[sendmail] qualify_domain`` and the ``path`` of each ``[[spool]]``. This reader returns them
in the shape ``tomllib`` would (``{"sendmail": {...}, "spool": [{...}, ...]}``), skipping every
other table, or ``None`` the moment the file holds anything outside the small, regular subset it
understands (multi-line strings, escapes or dotted keys where those keys live, a value it cannot
skip): the caller then reads the file with ``tomllib``. tests/test_perf_sendmail.py compares
the two on many configs.

Keys of ``[sendmail]`` other than those two are returned with a placeholder value, so that the
caller sees a key it does not know (and hands over to the full loader, which names it).
"""

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["read_subset"]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_TABLE_NAME = _BARE | {"."}
#: The tables whose keys are read; everything else is only skipped over.
_READ = ("sendmail", "spool")


class _Unsupported(Exception):
    pass


def read_subset(text: str) -> "dict[str, Any] | None":
    """The ``sendmail`` table and the ``spool`` table(s) of the TOML document ``text``, with
    their string values; None when the document needs the real parser."""
    try:
        return _read(text)
    except _Unsupported:
        return None


def _read(text: str) -> "dict[str, Any]":
    if '"""' in text or "'''" in text:
        raise _Unsupported
    data: dict[str, Any] = {}
    current: dict[str, Any] | None = None  # the table being read, None when skipping one
    root = True
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = _header(line, data)
            root = False
            continue
        key, sep, rest = line.partition("=")
        key = key.strip()
        if not sep or not key or not set(key) <= _BARE:
            if root or current is not None:
                raise _Unsupported  # a dotted or quoted key where it could matter
            if not sep:
                raise _Unsupported
        if root and key in _READ:
            raise _Unsupported  # sendmail = { ... } at the top: leave it to tomllib
        value, depth = _scan(rest)
        while depth:  # an array over several lines
            if index >= len(lines):
                raise _Unsupported
            _, depth = _scan(lines[index], depth)
            index += 1
        if current is not None:
            if key in current:
                raise _Unsupported  # a repeated key: tomllib's error
            current[key] = value
    return data


def _header(line: str, data: "dict[str, Any]") -> "dict[str, Any] | None":
    array = line.startswith("[[")
    close = line.find("]]" if array else "]")
    name = line[2 if array else 1 : close].strip()
    after = line[close + (2 if array else 1) :].strip()
    if close < 0 or not name or not set(name) <= _TABLE_NAME or after[:1] not in ("", "#"):
        raise _Unsupported
    head = name.split(".")[0]
    if head not in _READ:
        return None
    if name != head or (head == "sendmail" and array) or (head in data and not array):
        raise _Unsupported  # [sendmail.x], [[sendmail]], a table twice: let tomllib judge
    table: dict[str, Any] = {}
    if not array:
        data[head] = table  # [sendmail], or [spool]: one table, as tomllib gives it
        return table
    spools = data.setdefault("spool", [])
    if not isinstance(spools, list):
        raise _Unsupported  # [spool], then [[spool]]
    spools.append(table)
    return table


def _scan(text: str, depth: int = 0) -> tuple[object, int]:
    """The value at the start of ``text`` (a string, or a placeholder for anything else) and
    the bracket depth left open at the end of the line."""
    text = text.strip()
    if depth == 0 and text[:1] in ('"', "'"):
        quote = text[0]
        end = text.find(quote, 1)
        if end < 0 or (quote == '"' and "\\" in text[1:end]):
            raise _Unsupported  # an escape: tomllib decodes it
        rest = text[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise _Unsupported
        return text[1:end], 0
    position = 0
    while position < len(text):
        char = text[position]
        if char in "\"'":
            end = position + 1
            while end < len(text) and text[end] != char:
                end += 2 if char == '"' and text[end] == "\\" else 1
            if end >= len(text):
                raise _Unsupported
            position = end
        elif char == "#":
            break
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth < 0:
                raise _Unsupported
        position += 1
    return _OTHER, depth


#: What a value other than a plain string reads as: the caller checks its type and hands such
#: a key over to the full loader.
_OTHER = object()
