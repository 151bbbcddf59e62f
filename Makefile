# Two entry points for a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
APT_PKGS := flite espeak-ng sox libsndfile1 chromium

.PHONY: setup apt demo test test-all lint clean

apt:
	@missing=""; for c in flite espeak-ng sox; do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation deepspeed==0.19.8
	$(PIP) install -q -e ".[dev]"
	@touch $(STAMP)

setup: apt $(STAMP)

demo: setup
	$(VENV)/bin/emova demo --out demo_out

test: setup
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check emova tests

clean:
	rm -rf $(VENV) build *.egg-info
