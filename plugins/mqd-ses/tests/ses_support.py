"""Types shared by the SES tests and their conftest (a module of its own: with several
``conftest.py`` files in one pytest run, ``import conftest`` may find another one)."""

from __future__ import annotations

from collections.abc import Callable

from mqd_ses import SESRelay

#: The ``make_relay`` fixture: ``make_relay(endpoint_url, **keys) -> SESRelay``.
MakeRelay = Callable[..., SESRelay]
