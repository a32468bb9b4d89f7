# Common commands. `make setup` once on a fresh machine, then `make run` or `make test`.
PYTHON ?= python3

.PHONY: setup run test lint format

setup:  ## install the package, test tools, Redis and the MongoDB-wire test server
	$(PYTHON) -m pip install -e ".[test]"
	bash scripts/install-system-packages.sh
	bash scripts/install-ferretdb.sh

run:  ## serve on http://127.0.0.1:8000 (embedded store unless MONGO_URI is set)
	$(PYTHON) -m gunicorn -c gunicorn.conf.py wsgi:app

test:  ## the whole suite; it starts its own FerretDB and Redis
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .
