# The two commands a newcomer needs: `make run` and `make test`.
.PHONY: run test bench setup-run setup-test

run: setup-run
	.venv/bin/goldenhour serve

test: setup-test
	scripts/test.sh -q

bench: setup-test
	.venv/bin/python bench/sfu.py

setup-run:
	scripts/setup.sh run

setup-test:
	scripts/setup.sh test
