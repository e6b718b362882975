# The two commands a newcomer needs: `make run` and `make test`.
.PHONY: run test bench setup-run setup-test

run: setup-run
	.venv/bin/goldenhour serve

test: setup-test
	scripts/test.sh -q

# In a network namespace of its own where it can make one (root): only
# loopback, and an interface for the Janus baseline (bench/janus_baseline.py).
bench: setup-test
	if [ "$$(id -u)" -eq 0 ] && unshare -n true 2>/dev/null; then \
		unshare -n sh -c 'ip link set lo up && exec .venv/bin/python bench/sfu.py'; \
	else .venv/bin/python bench/sfu.py; fi

setup-run:
	scripts/setup.sh run

setup-test:
	scripts/setup.sh test
