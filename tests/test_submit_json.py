"""Reading the submit API's JSON (``read_json``): each union field takes the arm its value
fits, and a value that fits none (or fits an arm's outer type only) is refused naming every
arm, as trying each arm in turn says it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mqd.intake.submit.request import JsonAttachment, Refusal, read_json


def read(**fields: Any) -> Any:
    return read_json(json.dumps({"from": "app@example.com", **fields}).encode())


def test_each_union_field_takes_the_arm_its_value_fits() -> None:
    message = read(to="a@example.net", cc=["b@example.net", "c@example.net"], text=None)
    assert (message.to, message.cc, message.text) == (
        "a@example.net",
        ["b@example.net", "c@example.net"],
        None,
    )
    message = read(html="<p>hi</p>", attachments=[{"filename": "a.txt", "content": "aGk="}])
    assert message.html == "<p>hi</p>"
    assert message.attachments == [JsonAttachment("a.txt", "aGk=")]


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"to": 7}, "to must be a string or a list of strings, not 7"),
        ({"to": [7]}, "to must be a string or a list of strings, not [7]"),
        ({"bcc": {"a": 1}}, 'bcc must be a string or a list of strings, not {"a": 1}'),
        ({"text": 5}, "text must be a string or null, not 5"),
        ({"text": ["x"]}, 'text must be a string or null, not ["x"]'),
        ({"attachments": [{"filename": 1}]}, "attachments[0].filename must be a string, not 1"),
    ],
)
def test_a_value_of_no_arm_is_refused_naming_them_all(fields: dict[str, Any], detail: str) -> None:
    with pytest.raises(Refusal) as refused:
        read(**fields)
    assert (refused.value.status, refused.value.detail) == (400, detail)
