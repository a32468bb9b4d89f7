"""How embedded_store_v1.sqlite3 was made: an embedded store written by the code of commit
33a3cd6 (schema version 1, before the stats columns), through /api/track:

    git archive 33a3cd6 rybbit plugins | tar -x -C /tmp/v1
    PYTHONPATH=/tmp/v1 python tests/data/write_store_v1.py /tmp/v1inst
    sqlite3 /tmp/v1inst/data/rybbit.sqlite3 "VACUUM INTO 'tests/data/embedded_store_v1.sqlite3'"
"""

import json
import os
import sys

os.environ["RYBBIT_INSTANCE_PATH"] = sys.argv[1]
import rybbit
from rybbit import create_app, delivery, keys, sites
from rybbit.storage import get_store

assert rybbit.__file__.startswith("/tmp/v1"), rybbit.__file__
app = create_app({"TESTING": True, "MONGO_URI": None, "LOAD_PLUGINS": []})
with app.app_context():
    store = get_store()
    site = sites.create_site(store, name="Old", domain="old.example")
    key = keys.create_key(store, site["site_id"])["api_key"]
client = app.test_client()
agents = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
]
for n, path in enumerate(["/", "/pricing", "/", "/docs", "/pricing", "/"]):
    body = {
        "api_key": key,
        "site_id": site["site_id"],
        "pathname": path,
        "hostname": "old.example",
        "ip_address": f"203.0.113.{n % 3}",
        "user_agent": agents[n % 2],
        "timestamp": f"2026-12-01T10:0{n}:00Z",
    }
    assert client.post("/api/track", json=body).status_code == 200
body = {
    "api_key": key,
    "site_id": site["site_id"],
    "type": "custom_event",
    "event_name": "signup",
    "properties": json.dumps({"plan": "pro"}),
    "ip_address": "203.0.113.0",
    "user_agent": agents[0],
    "timestamp": "2026-12-01T10:07:00Z",
}
assert client.post("/api/track", json=body).status_code == 200
delivery.close(app)
with app.app_context():
    get_store().close()
print(json.dumps({"api_key": key}))
