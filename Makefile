# The two commands of the README:  `make demo`  and  `make test`.
# Both set up everything they need on a fresh Debian machine (root, Python 3.11):
# system packages (Mosquitto, PortAudio, ALSA utils), a virtualenv in .venv, earmark itself.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.earmark-installed
APT_PACKAGES := mosquitto libportaudio2 alsa-utils

.PHONY: demo test setup system-deps services lint clean

demo: setup
	$(VENV)/bin/earmark demo

test: setup services
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

setup: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,postgres,plot,dev]'
	touch $(STAMP)

# PostgreSQL runs as a service on machines of this kind; start it if it was stopped.
services:
	@if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -1) main start || true; \
	fi

lint: setup
	$(VENV)/bin/ruff check earmark device gateway firmware_sim models tests
	$(VENV)/bin/mypy earmark device gateway firmware_sim

clean:
	rm -rf $(VENV) .pytest_cache
