"""Which browser origins may send keyless events for a site.

A keyless event (no API key: the browser SDK) is accepted only from a page of the site: the
request's ``Origin`` (or, without one, ``Referer``) host must belong to the site's domain,
compared on registrable domains ("eTLD+1") with the Public Suffix List. So for the domain
``example.com`` (or ``www.example.com``) pages on ``example.com``, ``www.example.com`` and
``shop.example.com`` count, ``example.com.evil.net`` does not; for ``alice.github.io``,
``bob.github.io`` does not either (``github.io`` is a public suffix). Hosts that have no
registrable domain (``localhost``, IP addresses, a bare public suffix) must match exactly.
The site's ``allowed_origins`` setting adds whole origins (scheme, host, port).

The list comes from ``publicsuffixlist``, which ships the list in the package (no network at
run time) and is released whenever the upstream list changes.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from urllib.parse import urlsplit

from publicsuffixlist import PublicSuffixList

_PSL = PublicSuffixList()
_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_host(host: str) -> str | None:
    """A host name lower-cased, without a trailing dot, IDNA-encoded; None if it is not one."""
    host = host.strip().lower().rstrip(".")
    if not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def canonical_origin(text: str) -> str | None:
    """``scheme://host[:port]`` of an origin or URL (default ports left out), lower-case;
    None for anything that is not an http(s) origin (``null``, ``file:``, garbage)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = canonical_host(parts.hostname)
    if host is None:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


@lru_cache(maxsize=4096)
def _registrable(host: str) -> str | None:
    """The registrable domain of a canonical host; None for IPs and public suffixes."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    return _PSL.privatesuffix(host)


@lru_cache(maxsize=4096)
def host_belongs(host: str, domain: str) -> bool:
    """True when ``host`` (canonical) is a page host of the site ``domain``."""
    site_host = canonical_host(domain)
    if site_host is None:
        return False
    if host == site_host:
        return True
    site_registrable = _registrable(site_host)
    # An IP, localhost or a bare public suffix has nothing to widen to: only itself matches
    # (a site on "github.io" must not collect events from every *.github.io page).
    return site_registrable is not None and _registrable(host) == site_registrable


def request_origin(origin_header: str | None, referer_header: str | None) -> str | None:
    """The canonical origin of the page that sent a request: its ``Origin`` header, or the
    origin of its ``Referer`` when the browser sent no Origin. None when neither names one."""
    for header in (origin_header, referer_header):
        if header:
            found = canonical_origin(header)
            if found is not None:
                return found
            if header is origin_header:
                return None  # an Origin that is not http(s) ("null"): no page of any site
    return None


def origin_allowed(origin: str | None, domain: str, allowed_origins: list[str]) -> bool:
    """True when a keyless event from ``origin`` (canonical, see request_origin) may be stored
    for a site with this domain and extra allowed origins."""
    if origin is None:
        return False
    if origin in allowed_origins:
        return True
    host = urlsplit(origin).hostname
    return host is not None and host_belongs(canonical_host(host) or "", domain)
