# Common commands. On a fresh machine `make run` and `make test` each install what they need
# the first time; afterwards they only check (a fraction of a second) and install nothing.
# `make setup` installs everything again explicitly.
PYTHON ?= python3

.PHONY: setup run test lint format python-packages system-packages ferretdb

# Each of these returns at once when what it installs is present.
python-packages:  ## this package, its dependencies and the test tools, through pip
	@$(PYTHON) scripts/python-packages-ok.py || $(PYTHON) -m pip install -e ".[test]"

system-packages:  ## Redis (rate-limit tests), wrk (benchmarks), Chromium and npm (browser tests), through apt
	@bash scripts/install-system-packages.sh

ferretdb:  ## the MongoDB-wire test server, built with Go once
	@bash scripts/install-ferretdb.sh

setup: system-packages ferretdb  ## install (again) the package, test tools, Redis, FerretDB
	$(PYTHON) -m pip install -e ".[test]"

run: python-packages  ## serve on http://127.0.0.1:8000 (embedded store unless MONGO_URI is set)
	$(PYTHON) -m gunicorn -c gunicorn.conf.py wsgi:app

test: python-packages system-packages ferretdb  ## the whole suite; it starts its own FerretDB and Redis
	$(PYTHON) -m pytest

lint: python-packages
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: python-packages
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .
