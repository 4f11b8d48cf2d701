"""The plain address reader (mqd.message.headers' fast path, for speed) against the standard
library's
RFC 5322 parser: whenever the fast path answers, it answers what the full parser would. And the
scanners that replaced regular expressions (``re`` costs ``mqd sendmail`` ~10 ms to import)
against those expressions, which stay here as the reference."""

from __future__ import annotations

import re
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqd.message.headers import (
    _field_name,
    _parsed_addresses,
    _plain_addresses,
    read_envelope,
    unfold,
)

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

atext = st.sampled_from(list("abcXYZ019!#$%&'*+-/=?^_`{|}~"))
atoms = st.lists(atext, min_size=1, max_size=4).map("".join)
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)
addr_specs = st.tuples(dot_atoms, dot_atoms).map("@".join)
names = st.one_of(
    st.lists(atoms, min_size=1, max_size=3).map(" ".join),
    st.text(alphabet="ab ,;:<>@.()", max_size=12).map(lambda t: f'"{t}"'),
)
blanks = st.sampled_from(["", " ", "  ", "\t"])
mailboxes = st.one_of(
    st.tuples(blanks, addr_specs, blanks).map("".join),
    st.tuples(blanks, names, blanks, addr_specs, blanks).map(
        lambda t: f"{t[0]}{t[1]}{t[2]}<{t[3]}>{t[4]}"
    ),
)
plain_lists = st.lists(mailboxes, min_size=1, max_size=4).map(",".join)
# Anything: the fast path must refuse (None) or agree.
noise = st.lists(
    st.sampled_from([*'ab@.<>"() ,;:\\\t=?', "example.com", "\u0430", "a@b.c"]), max_size=25
).map("".join)


@SETTINGS
@given(plain_lists)
def test_a_plain_list_is_read_as_the_full_parser_reads_it(value: str) -> None:
    plain = _plain_addresses(value)
    assert plain is not None
    assert plain == _parsed_addresses(value, "to")


@SETTINGS
@given(st.one_of(noise, plain_lists))
def test_the_fast_path_agrees_or_stands_aside(value: str) -> None:
    plain = _plain_addresses(value)
    if plain is not None:
        assert plain == _parsed_addresses(value, "to")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bob@example.net", ["bob@example.net"]),
        ("Bob <bob@example.net>", ["bob@example.net"]),
        (
            '"Doe, Jane" <jane@example.net>, carol@example.net',
            ["jane@example.net", "carol@example.net"],
        ),
        (" a+tag@example.net ,\tB C<b@example.net> ", ["a+tag@example.net", "b@example.net"]),
    ],
)
def test_common_headers_take_the_fast_path(value: str, expected: list[str]) -> None:
    assert _plain_addresses(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "root",  # no domain: qualified later by mqd sendmail
        "root (Cron Daemon)",  # a comment
        "undisclosed-recipients:;",  # a group
        '"odd local"@example.net',  # a quoted local part
        "user@example.com.",  # a trailing root dot
        "J\u00f6rg <j@example.de>",  # not ASCII
        "a@b.c,,d@e.f",  # an empty list member
        "",
    ],
)
def test_anything_else_goes_to_the_full_parser(value: str) -> None:
    assert _plain_addresses(value) is None


def test_a_message_with_plain_headers_does_not_load_the_email_parser() -> None:
    """Structural: reading the bench's message never imports email.policy (run in a fresh
    interpreter: this one may have it already)."""
    import subprocess

    code = (
        "import sys; from mqd.message.headers import read_envelope;"
        "print(read_envelope(b'From: App <a@example.com>\\nTo: b@example.net\\n\\nx')[:2]);"
        "print('email.policy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split("\n")
    assert out[0] == "('a@example.com', ('b@example.net',))"
    assert out[1] == "False"
    assert read_envelope(b"From: a@example.com\nTo: root (Cron)\n\nx")[1] == ()  # fallback ran


# -- the scanners against the regular expressions they replaced --------------------------------

_ATEXT_RE = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_DOT_ATOM_RE = rf"{_ATEXT_RE}+(?:\.{_ATEXT_RE}+)*"
_ADDR_SPEC_RE = rf"{_DOT_ATOM_RE}@{_DOT_ATOM_RE}"
_PHRASE_RE = rf'(?:{_ATEXT_RE}+(?:[ \t]+{_ATEXT_RE}+)*|"[^"\\\r\n]*")'
PLAIN_MAILBOX = re.compile(
    rf"[ \t]*(?:({_ADDR_SPEC_RE})|(?:{_PHRASE_RE}[ \t]*)?<({_ADDR_SPEC_RE})>)[ \t]*"
)
FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
FOLD = re.compile(r"\r?\n(?=[ \t])")


def plain_addresses_by_regex(value: str) -> list[str] | None:
    if not value.isascii():
        return None
    found: list[str] = []
    pos, end = 0, len(value)
    while True:
        match = PLAIN_MAILBOX.match(value, pos)
        if match is None:
            return None
        found.append(match.group(1) or match.group(2))
        pos = match.end()
        if pos == end:
            return found
        if value[pos] != ",":
            return None
        pos += 1


@SETTINGS
@given(st.one_of(noise, plain_lists, plain_lists.map(lambda v: v + ","), names))
def test_the_mailbox_scanner_reads_what_the_regular_expression_read(value: str) -> None:
    assert _plain_addresses(value) == plain_addresses_by_regex(value)


header_lines = st.lists(
    st.sampled_from(["X-Sender", "To", "a", ":", " ", "\t", "b;c", "\x7f", "é", "\r\n", "\n"]),
    max_size=8,
).map(lambda parts: "".join(parts).encode("utf-8"))


@SETTINGS
@given(header_lines)
def test_the_field_name_scanner_reads_what_the_regular_expression_read(line: bytes) -> None:
    match = FIELD_NAME.match(line)
    assert _field_name(line) == (match.group(1) if match else None)


@SETTINGS
@given(st.lists(st.sampled_from(["a", " ", "\t", "\r", "\n", "\r\n", ":", "b"]), max_size=12))
def test_unfolding_removes_what_the_regular_expression_removed(parts: list[str]) -> None:
    raw = ("X:" + "".join(parts)).encode()
    text = raw.split(b":", 1)[1].decode()
    text = FOLD.sub("", text)
    expected = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    assert unfold(raw) == expected


def address_problem_reference(address: str) -> bool:
    """The character checks of address_problem, one character at a time: spaces, controls
    (C0, DEL, C1), invisible format characters, angle brackets."""
    return any(
        c.isspace() or ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c in "<>\u200b\u202e"
        for c in address
    )


@SETTINGS
@given(
    st.text(
        alphabet=st.sampled_from(
            [*"ab@.<> \t\x7f\x1f\x00", "\u00a0", "\u2003", "é", "\x85", "\u200b", "\u202e"]
        )
    )
)
def test_address_checks_refuse_what_they_refused_before(address: str) -> None:
    from mqd.message.headers import address_problem

    problem = address_problem(address)
    if address and not any(c in address for c in "\r\n\x00") and address_problem_reference(address):
        assert problem == "it contains spaces, control characters or angle brackets"
    elif problem == "it contains spaces, control characters or angle brackets":
        raise AssertionError(f"{address!r} refused for characters it does not have")
