# The two commands a newcomer needs: `make up` (install + run) and `make test`.
.PHONY: up test setup check unit integration system bench

up:
	scripts/setup
	.venv/bin/morgan up

test:
	scripts/setup --test
	scripts/check
	.venv/bin/python -m pytest -p no:cacheprovider tests

setup:
	scripts/setup --test

check:
	scripts/check

unit:
	.venv/bin/python -m pytest tests/unit

integration:
	.venv/bin/python -m pytest tests/integration

system:
	.venv/bin/python -m pytest tests/system

bench:
	.venv/bin/python bench/turn_latency.py
