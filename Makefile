# The two quick-start commands of the README.
.PHONY: demo test lint

demo:
	./scripts/bootstrap.sh demo
	.venv/bin/guard demo

test:
	./scripts/bootstrap.sh test
	.venv/bin/python -m pytest -n auto --dist loadfile

lint:
	.venv/bin/ruff check .
	.venv/bin/mypy
