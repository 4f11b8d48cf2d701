"""The plain address reader (mqd.headers' fast path, for speed) against the standard library's
RFC 5322 parser: whenever the fast path answers, it answers what the full parser would."""

from __future__ import annotations

import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqd.headers import _parsed_addresses, _plain_addresses, read_envelope

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
        "import sys; from mqd.headers import read_envelope;"
        "print(read_envelope(b'From: App <a@example.com>\\nTo: b@example.net\\n\\nx')[:2]);"
        "print('email.policy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split("\n")
    assert out[0] == "('a@example.com', ('b@example.net',))"
    assert out[1] == "False"
    assert read_envelope(b"From: a@example.com\nTo: root (Cron)\n\nx")[1] == ()  # fallback ran
