# Entry points for the local stack and the test suite.
#
# The stack (Kafka in KRaft mode on 127.0.0.1:9092, FerretDB on
# 127.0.0.1:27017, an S3-compatible server on 127.0.0.1:9000) is installed
# and run by stack/stack.sh under .stack/.
# FIELDFORCE_STORE_BACKEND=sqlite|postgresql picks FerretDB's backend.

CARGO ?= cargo
# Extend or override this to change what `make test` runs after the stack is up.
# Benchmarks are left out: they measure, they do not check, and CI has no quiet machine.
CARGO_TEST ?= $(CARGO) test --workspace --lib --bins --tests

STACK := stack/stack.sh

.PHONY: up down status logs clean-stack test lint demo

## up: install what is missing, start Kafka, FerretDB and the S3 server, wait until they answer, and
## create the topics of the catalog (kafka/topics.toml) that are missing
up:
	@$(STACK) up
	@$(CARGO) run --quiet -p fieldforce-kafka --bin fieldforce-topics -- apply
	@stack/fetch-boundaries >/dev/null

## down: stop every stack process started from this checkout
down:
	@$(STACK) down

## status: show which stack processes run
status:
	@$(STACK) status

## logs: print where the stack writes its logs
logs:
	@$(STACK) logs

## clean-stack: stop the stack and remove its data and logs, keeping downloads
clean-stack:
	@$(STACK) clean

## test: start the stack, check formatting and lints, then run every test against the stack
test: up lint
	$(CARGO_TEST)

## lint: rustfmt and clippy, with warnings denied
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## demo: the main job end to end: stack, services, replay, generated load, summary
## (INPUT=dir replays another folder of submissions; RATE and DURATION_S shape the load)
demo:
	@INPUT="$(INPUT)" AREA="$(AREA)" RATE="$(RATE)" DURATION_S="$(DURATION_S)" stack/demo.sh
