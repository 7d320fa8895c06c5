# The two commands of the README, plus a few conveniences.
.PHONY: run test lint protos docs bench

run:  ## install everything and start the server on :50051
	bash scripts/run.sh

test:  ## install everything and run the whole test suite
	bash scripts/test.sh

lint:
	.venv/bin/ruff check app tests bench && .venv/bin/ruff format --check app tests bench

protos:  ## regenerate app/gen from proto/
	.venv/bin/python -m app.protogen

docs:  ## regenerate docs that are generated from code
	.venv/bin/paraformer-asr config-reference > docs/configuration.md
	.venv/bin/python scripts/gen_api_docs.py
