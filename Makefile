# The two commands a newcomer needs (both set the host up first, idempotently, as root):
#   make demo   - agent + server + a small traffic source; prints a trace and a flame graph
#   make test   - the whole test suite (kernel tests included; they need root)
.PHONY: setup demo test lint bench
setup:
	@scripts/setup.sh
demo: setup
	.venv/bin/zerotrace demo
test: setup
	.venv/bin/python -m pytest -q --durations=25 $(PYTEST_ARGS)
lint: setup
	.venv/bin/ruff check .
bench: setup
	.venv/bin/python -m bench
