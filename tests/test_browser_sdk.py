"""Rybbit's own browser SDK, in a real browser, against a real gunicorn, on both stores.

``@rybbit/js`` (AGPL: fetched with ``npm pack`` into a cache folder outside the repository at
test time, never vendored) runs in Debian's headless Chromium, driven by Playwright with
``executable_path`` (Playwright never downloads a browser here). The page is served from a
local origin, ``http://localhost:PORT``, the site's domain being ``localhost``; the API is on
another origin (``127.0.0.1``), so every call is a real cross-origin request with sendBeacon's
credentials. The same page served as ``http://127.0.0.1:PORT`` is a foreign origin.

Without chromium, node or npm these tests fail rather than skip: CI installs them
(scripts/install-system-packages.sh).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.gunicorn_service import Service, run_service
from tests.npm_packages import npm_package

SDK_VERSION = "0.6.2"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Headless Chromium names itself HeadlessChrome, a bot to crawler lists (and so to block_bots,
# which the default site settings turn on): the visitor here is an ordinary desktop Chrome.
DESKTOP_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Checkout</title></head>
<body><p>Shop</p>
<script type="module">
import rybbit from "/sdk/index.mjs";
window.rybbit = rybbit;
await rybbit.init({analyticsHost: "%(api)s/api", siteId: "%(site_id)s", debug: true,
                   debounceDuration: 0});
window.rybbitReady = true;
</script></body></html>
"""


@pytest.fixture(scope="session")
def rybbit_sdk() -> Path:
    """The unpacked ``@rybbit/js`` package, fetched from npm once per machine."""
    return npm_package("@rybbit/js", SDK_VERSION, "dist/index.mjs")


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium under Playwright, shared by the session's tests."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no {CHROMIUM}: run `make setup` (scripts/install-system-packages.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def page_server(root: Path) -> Iterator[int]:
    """A static file server for ``root`` on a free loopback port (both localhost and
    127.0.0.1 reach it)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def service(tmp_path: Path, mongo_uri: str | None) -> Iterator[Service]:
    # No lookup cache: a settings change reaches both workers at once.
    with run_service(tmp_path, mongo_uri, workers=2, RYBBIT_AUTH_CACHE_SECONDS="0") as running:
        yield running


@pytest.fixture
def site_id(service: Service) -> str:
    site = service.admin("POST", "/sites", {"name": "Shop", "domain": "localhost"})
    return str(site["site_id"])


@pytest.fixture
def page_port(tmp_path: Path, rybbit_sdk: Path, service: Service, site_id: str) -> Iterator[int]:
    root = tmp_path / "site"
    (root / "sdk").mkdir(parents=True)
    shutil.copy(rybbit_sdk / "dist" / "index.mjs", root / "sdk" / "index.mjs")
    (root / "index.html").write_text(PAGE % {"api": service.base_url, "site_id": site_id})
    with page_server(root) as port:
        yield port


class Visit:
    """One browser page on ``url``, with what its console said and what the API answered."""

    def __init__(self, chromium: Any, url: str) -> None:
        self.context = chromium.new_context(user_agent=DESKTOP_CHROME)
        self.page = self.context.new_page()
        self.console: list[tuple[str, str]] = []
        self.answers: list[tuple[str, str, int]] = []
        self.page.on("console", lambda msg: self.console.append((msg.type, msg.text)))
        self.page.on("pageerror", lambda exc: self.console.append(("pageerror", str(exc))))
        self.page.on(
            "response",
            lambda r: self.answers.append((r.request.method, r.url, r.status)),
        )
        self.page.goto(url)
        self.page.wait_for_function("window.rybbitReady === true", timeout=10_000)

    def run(self, script: str) -> Any:
        return self.page.evaluate(script)

    def wait_for(self, check: Callable[[], Any], seconds: float = 15) -> Any:
        """Poll ``check`` until it is truthy; the browser's events (console, responses) are
        delivered meanwhile, which Playwright's sync API does only inside its own calls."""
        deadline = time.monotonic() + seconds
        while True:
            found = check()
            if found or time.monotonic() > deadline:
                return found
            self.page.wait_for_timeout(100)

    def errors(self) -> list[str]:
        return [text for kind, text in self.console if kind in ("error", "pageerror")]

    def close(self) -> None:
        self.context.close()


def stored(service: Service, site_id: str) -> list[dict[str, Any]]:
    return list(service.admin("GET", f"/sites/{site_id}/events?order=asc&limit=1000")["events"])


def test_the_browser_sdk_tracks_from_the_sites_own_origin(
    chromium: Any, service: Service, site_id: str, page_port: int
) -> None:
    visit = Visit(chromium, f"http://localhost:{page_port}/index.html?ref=ad")
    try:
        # The initial pageview goes on the next animation frame after init.
        assert visit.wait_for(lambda: len(stored(service, site_id)) >= 1)
        visit.run("window.rybbit.event('purchase', {amount: 99.99, currency: 'USD'})")
        assert visit.wait_for(lambda: len(stored(service, site_id)) >= 2)
        with visit.page.expect_response(lambda r: r.url.endswith("/api/identify")) as identified:
            visit.run("window.rybbit.identify('user-42', {plan: 'pro'})")
        assert identified.value.status == 200
        visit.run("history.pushState({}, '', '/thanks')")  # an SPA navigation
        events = visit.wait_for(
            lambda: (found := stored(service, site_id)) and len(found) >= 3 and found
        )
        visit.page.wait_for_timeout(500)  # nothing more arrives
        events = stored(service, site_id)
        errors = visit.errors()
        answers = visit.answers
    finally:
        visit.close()

    assert [e["type"] for e in events] == ["pageview", "custom_event", "pageview"], events
    first, custom, second = events
    for event in events:
        assert event["hostname"] == "localhost"
        assert event["browser"] == "Chrome"
        assert event["api_key_id"] is None  # keyless
        assert event["language"]
        assert event["screen_width"] > 0
        assert event["page_title"] == "Checkout"
    assert first["pathname"] == "/index.html"
    assert first["querystring"] == "?ref=ad"
    assert first.get("anonymous") is True
    assert custom["event_name"] == "purchase"
    assert custom["properties"] == {"amount": 99.99, "currency": "USD"}
    assert custom["user_id"] == first["user_id"]  # the same anonymous visitor
    assert second["pathname"] == "/thanks"
    assert second["user_id"] == "user-42"
    assert "anonymous" not in second
    assert errors == []
    # Every call the SDK made was answered with success: config, track and identify.
    assert answers and all(status == 200 for _, _, status in answers), answers
    assert any("/api/site/tracking-config/" in url for _, url, _ in answers)


def test_the_same_page_from_a_foreign_origin_stores_nothing(
    chromium: Any, service: Service, site_id: str, page_port: int
) -> None:
    visit = Visit(chromium, f"http://127.0.0.1:{page_port}/index.html")
    try:
        refused = visit.wait_for(
            lambda: [a for a in visit.answers if a[1].endswith("/api/track") and a[2] == 403]
        )
        visit.run("window.rybbit.event('purchase', {amount: 1})")
        visit.run("window.rybbit.identify('user-42')")
        assert visit.wait_for(lambda: len([a for a in visit.answers if a[2] == 403]) >= 3)
    finally:
        visit.close()
    assert refused
    assert stored(service, site_id) == []


def test_a_foreign_origin_listed_in_allowed_origins_is_accepted(
    chromium: Any, service: Service, site_id: str, page_port: int
) -> None:
    origin = f"http://127.0.0.1:{page_port}"
    service.admin("PATCH", f"/sites/{site_id}", {"settings": {"allowed_origins": [origin]}})
    visit = Visit(chromium, f"{origin}/index.html")
    try:
        events = visit.wait_for(lambda: stored(service, site_id))
    finally:
        visit.close()
    assert [e["hostname"] for e in events] == ["127.0.0.1"]
    assert json.dumps(events)  # plain JSON all the way
