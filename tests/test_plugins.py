"""The plugin system: discovery through entry points, isolation, ordering, configuration, report."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from rybbit import create_app, keys, sites
from rybbit.enrichment import Enricher, order_enrichers
from rybbit.plugin_loader import BUILTIN_PLUGINS, RUNNER_KEY
from rybbit.store import get_store
from tests.conftest import add_enricher, all_events

ROOT = Path(__file__).resolve().parent.parent
ADMIN = {"Authorization": "Bearer plugin-admin-token-0123456789abcdefghij"}
BUILTIN_NAMES = [name.rsplit(".", 1)[-1] for name in BUILTIN_PLUGINS]


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin package, really installed by pip into a folder of its own."""
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "examples" / "rybbit-plugin-example"),
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Put folders on sys.path so importlib.metadata finds the distributions in them."""

    def add(*folders: Path) -> None:
        for folder in folders:
            monkeypatch.syspath_prepend(str(folder))

    yield add
    for name in [
        m for m in sys.modules if m.startswith(("rybbit_plugin_example", "broken_plugin"))
    ]:
        del sys.modules[name]


def broken_distribution(folder: Path, module_body: str | None) -> Path:
    """A minimal installed distribution whose entry point names ``broken_plugin``."""
    dist = folder / "broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rybbit.plugins]\nbroken = broken_plugin\n")
    if module_body is not None:
        (folder / "broken_plugin.py").write_text(textwrap.dedent(module_body))
    return folder


def make_app(extra: dict[str, Any] | None = None) -> Flask:
    return create_app(
        {"MONGO_URI": None, "ADMIN_TOKEN": ADMIN["Authorization"][7:], **(extra or {})}
    )


def track(app: Flask, **fields: Any) -> dict[str, Any]:
    """Post one event with a fresh site and key; return the stored event."""
    with app.app_context():
        store = get_store()
        site = sites.create_site(store, name="p", domain="p.example")
        key = keys.create_key(store, site["site_id"])["api_key"]
    response = app.test_client().post(
        "/api/track", json={"api_key": key, "site_id": site["site_id"], **fields}
    )
    assert response.status_code == 200, response.get_json()
    with app.app_context():
        (event,) = all_events(get_store(), site["site_id"])
        return event


def plugins_report(app: Flask) -> dict[str, dict[str, Any]]:
    response = app.test_client().get("/api/admin/plugins", headers=ADMIN)
    assert response.status_code == 200
    return {p["name"]: p for p in response.get_json()["plugins"]}


def test_third_party_plugin_is_found_through_its_entry_point(
    instance_path: Path, installed_example: Path, on_path: Any
) -> None:
    on_path(installed_example)
    app = make_app({"PLUGIN_SETTINGS": {"example": {"tag": "from-settings"}}})
    event = track(app, page_title="Three word title")
    assert event["title_words"] == 3 and event["tag"] == "from-settings"
    report = plugins_report(app)["example"]
    assert report["version"] == "1.2.0" and report["enabled"] and report["healthy"]
    assert report["hooks"] == ["register_enrichers"] and report["enrichers"] == ["title_words"]
    assert report["source"] == "entry point rybbit_plugin_example"


def test_load_plugins_limits_which_third_party_plugins_load(
    instance_path: Path, installed_example: Path, on_path: Any
) -> None:
    on_path(installed_example)
    app = make_app({"LOAD_PLUGINS": []})
    assert "title_words" not in track(app)
    assert "example" not in plugins_report(app)


def test_disabled_plugins_are_listed_but_not_run(
    instance_path: Path, installed_example: Path, on_path: Any
) -> None:
    on_path(installed_example)
    app = make_app({"PLUGINS_DISABLED": ["example", "url_params"]})
    event = track(app, querystring="?utm_source=news")
    assert "title_words" not in event and "utm_source" not in event
    report = plugins_report(app)
    assert (
        report["example"]["enabled"] is False
        and report["example"]["status"] == "disabled by configuration"
    )
    assert report["url_params"]["enabled"] is False


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, "ModuleNotFoundError"),
        ("raise RuntimeError('broken at import')\n", "broken at import"),
        (
            """
     from rybbit.plugin import hookimpl
     @hookimpl
     def register_enrichers(register):
         raise ValueError('cannot register')
     """,
            "cannot register",
        ),
        (
            """
     from rybbit.plugin import hookimpl
     @hookimpl
     def no_such_hook():
         pass
     """,
            "failed to register",
        ),
    ],
)
def test_a_broken_plugin_is_skipped_and_start_up_goes_on(
    instance_path: Path,
    tmp_path: Path,
    on_path: Any,
    caplog: pytest.LogCaptureFixture,
    body: str | None,
    expected: str,
) -> None:
    on_path(broken_distribution(tmp_path / "broken", body))
    caplog.set_level(logging.INFO)
    app = make_app()
    event = track(app, querystring="?utm_source=x")
    assert event["utm_source"] == "x", "built-in enrichers still run"
    report = plugins_report(app)["broken"]
    assert report["healthy"] is False and expected in report["status"]
    assert any("broken" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_a_raising_enricher_is_skipped_counted_and_the_event_stored(
    instance_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    def explode(event: dict[str, Any], context: Any) -> None:
        raise RuntimeError("boom")

    add_enricher(app, "exploding", explode)
    add_enricher(
        app, "after_explode", lambda e, c: e.__setitem__("after", True), after=("exploding",)
    )
    event = track(app, pathname="/still-stored")
    assert event["pathname"] == "/still-stored" and event["after"] is True
    assert app.extensions[RUNNER_KEY].failures["exploding"] == 1
    assert any("enricher exploding failed" in r.getMessage() for r in caplog.records)


class Named(Enricher):
    def __init__(self, name: str, after: tuple[str, ...] = (), stage: str = "request") -> None:
        self.name, self.after, self.stage = name, after, stage


def test_request_stage_runs_first_and_cannot_wait_for_the_shipping_stage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    given = [
        Named("late", stage="shipping"),
        Named("early", after=("late",)),  # impossible: ignored, logged
        Named("later", after=("late",), stage="shipping"),
        Named("odd", stage="sometime"),  # unknown stage: runs at request time
    ]
    assert [e.name for e in order_enrichers(given)] == ["early", "odd", "late", "later"]
    assert "enricher early runs at request time, after ['late']" in caplog.text
    assert "has stage 'sometime'" in caplog.text


class Shipped(Enricher):
    """A third party's shipping-stage enricher: it records the batches it was given."""

    name = "shipped_marker"
    stage = "shipping"

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], list[Any]]] = []

    def enrich(self, event: dict[str, Any], context: Any) -> None:
        self.enrich_many([event], [context])

    def enrich_many(self, events: Any, contexts: Any) -> None:
        self.batches.append(([e["pathname"] for e in events], list(contexts)))
        for event in events:
            event["marked"] = event.get("country_seen", "none")


def test_a_shipping_stage_enricher_runs_on_the_batch_after_the_request_stage(
    instance_path: Path,
) -> None:
    app = make_app()
    marker = Shipped()
    app.extensions[RUNNER_KEY].add(marker)
    # A request-stage enricher leaves what the shipping stage needs of the request.
    add_enricher(app, "request_side", lambda e, c: e.__setitem__("country_seen", "XX"))
    with app.app_context():
        site = sites.create_site(get_store(), name="s", domain="s.example")
        key = keys.create_key(get_store(), site["site_id"])["api_key"]
    items = [{"api_key": key, "site_id": site["site_id"], "pathname": f"/{n}"} for n in range(5)]
    assert app.test_client().post("/api/track/batch", json=items).get_json()["accepted"] == 5
    assert [paths for paths, _ in marker.batches] == [["/0", "/1", "/2", "/3", "/4"]]
    context = marker.batches[0][1][0]
    assert context.site["_id"] == site["site_id"] and context.store is not None
    assert dict(context.headers) == {} and context.client_ip is None  # the request is gone
    with app.app_context():
        stored = all_events(get_store())
    assert {e["marked"] for e in stored} == {"XX"}


def test_order_follows_dependencies_then_names() -> None:
    given = [
        Named("zeta"),
        Named("alpha", after=("zeta",)),
        Named("beta"),
        Named("gamma", after=("missing",)),
    ]
    assert [e.name for e in order_enrichers(given)] == ["beta", "gamma", "zeta", "alpha"]
    assert [e.name for e in order_enrichers(list(reversed(given)))] == [
        "beta",
        "gamma",
        "zeta",
        "alpha",
    ]


def test_cycles_and_duplicate_names_do_not_stop_start_up(caplog: pytest.LogCaptureFixture) -> None:
    given = [Named("a", after=("b",)), Named("b", after=("a",)), Named("a")]
    assert [e.name for e in order_enrichers(given)] == ["a", "b"]
    assert "cycle" in caplog.text and "two enrichers are named 'a'" in caplog.text


def test_builtin_order_is_documented_and_stable(instance_path: Path) -> None:
    names = [e.name for e in make_app().extensions[RUNNER_KEY].enrichers]
    assert names == [
        "device",
        "geo",
        "identity",
        "url_params",
        "aliases",
        "bots",
        "channel",
        "screen",
        "sessions",
    ]


def test_plugins_report_covers_every_builtin(instance_path: Path) -> None:
    report = plugins_report(make_app())
    assert set(BUILTIN_NAMES) <= set(report)
    geo = report["geo"]
    assert geo["enabled"] is True and geo["healthy"] is False
    assert geo["status"].startswith("geo: disabled, no database at ")
    assert all(report[name]["healthy"] for name in BUILTIN_NAMES if name != "geo")


def test_plugins_route_needs_the_admin_token(instance_path: Path) -> None:
    assert make_app().test_client().get("/api/admin/plugins").status_code == 401


def test_every_hook_is_documented_and_exercised() -> None:
    """A new hook needs a section in docs/plugins.md and a test that calls it."""
    import inspect

    from rybbit import hookspecs

    guide = (ROOT / "docs" / "plugins.md").read_text()
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    examples = (
        ROOT / "examples" / "rybbit-plugin-example" / "rybbit_plugin_example.py"
    ).read_text()
    hooks = [
        name
        for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(f, hookspecs.PROJECT + "_spec")
    ]
    assert hooks == ["register_enrichers"]
    for hook in hooks:
        assert f"### `{hook}(" in guide
        assert f"def {hook}(" in examples and "installed_example" in tests
