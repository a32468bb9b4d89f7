"""The client address behind trusted reverse proxies, and only ever an IP address."""

from __future__ import annotations

import ipaddress
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix


class _PeerUnlessIp:
    """Runs inside ProxyFix: when the forwarded address it took is not an IP address
    (``X-Forwarded-For: not-an-ip``, a port, junk from a misconfigured proxy), the request
    keeps the peer's address, which the operator's proxy set and which is always one."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        original = environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR")
        if original is not None and environ.get("REMOTE_ADDR") != original:
            try:
                ipaddress.ip_address(environ.get("REMOTE_ADDR") or "")
            except ValueError:
                environ["REMOTE_ADDR"] = original
        return self.app(environ, start_response)


def trust_proxies(app: Flask, hops: int) -> None:
    """Take the client address (and scheme) from the headers set by ``hops`` proxies, counted
    from the right, never from the leftmost entry, which the client controls."""
    app.wsgi_app = ProxyFix(_PeerUnlessIp(app.wsgi_app), x_for=hops, x_proto=hops)  # type: ignore[method-assign]
