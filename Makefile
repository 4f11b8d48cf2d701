# Conveniences around the same commands CI runs (.ci/run is the source of truth).
.PHONY: check test lint typecheck format

check:
	.ci/run

test:
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

typecheck:
	.venv/bin/mypy

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .
