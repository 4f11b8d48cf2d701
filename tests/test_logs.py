"""The text log format: what the standard formatter would write, time stamp included."""

from __future__ import annotations

import logging

from mqd.logs import TextFormatter


def test_text_lines_match_the_standard_formatter_across_seconds() -> None:
    ours = TextFormatter()
    standard = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    record = logging.LogRecord("mqd.delivery", logging.INFO, __file__, 1, "%s sent", ("q1",), None)
    for created in (1_796_240_974.001, 1_796_240_974.999, 1_796_240_975.5, 1_796_240_974.25):
        record.created, record.msecs = created, (created % 1) * 1000
        assert ours.format(record) == standard.format(record)
