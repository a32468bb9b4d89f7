"""device: browser, operating system and device type from the user agent.

Classification is user-agents' (``is_mobile``, ``is_tablet``, ``is_pc``, ``is_bot``, ...), with
two improvements over Rybbit: tablets are their own type, and an app's own user agent such as
``MyApp/1.0 (Linux; x64)`` is not taken for a phone or a desktop browser; such events are
"Unknown" unless the screen size says more (see the screen enricher).

user-agents parses with ua-parser's legacy pure-Python path (~500 us per string). Here the
same classification is fed by ua-parser 1.x's native resolver (ua-parser-rs, ~15 us), and
results are cached per user-agent string, so repeats cost a dictionary lookup.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import re2
import ua_parser
import user_agents.parsers as ua_parsers

from rybbit.plugin import Enricher, EnrichmentContext, hookimpl

DEVICE_TYPES = ("Desktop", "Mobile", "Tablet", "TV", "Console", "Wearable", "Bot", "Unknown")
# Lower-case markers of device kinds that user-agents does not tell apart, in one RE2 pattern
# with a group per kind: ~3 us per user agent, where Python's re or `in` tests take ~4-5 us.
_KINDS = {
    "Console": ("playstation", "xbox", "nintendo"),
    "TV": (
        "smarttv",
        "smart-tv",
        "smart tv",
        "googletv",
        "android tv",
        "androidtv",
        "appletv",
        "apple tv",
        "tvos",
        "hbbtv",
        "bravia",
        "roku",
        "crkey",
        "web0s",
        "webos.tv",
        "webos tv",
        "netcast",
        "tv safari",
        "sonydtv",
        "; aft",
    ),
    "Wearable": ("watch os", "watchos", "wear os", "wearos", "apple watch", "; sm-r", " watch"),
}
_KIND_NAMES = tuple(_KINDS)
_KIND_PATTERN = re2.compile(
    "|".join("(" + "|".join(re.escape(m) for m in markers) + ")" for markers in _KINDS.values())
)


def _kind(ua_string: str) -> str | None:
    """ "Console", "TV" or "Wearable" when the user agent names one, else None."""
    found = _KIND_PATTERN.search(ua_string.lower())
    return _KIND_NAMES[found.lastindex - 1] if found else None


@lru_cache(maxsize=1)
def _parser() -> ua_parser.Parser:
    # The native resolver without ua-parser's own cache: describe() below caches results.
    resolver = ua_parser.RegexResolver or ua_parser.Re2Resolver or ua_parser.BasicResolver
    builtins = (
        ua_parser.load_lazy_builtins()
        if resolver is not ua_parser.BasicResolver
        else ua_parser.load_builtins()
    )
    return ua_parser.Parser(resolver(builtins))


def _version(*parts: str | None) -> tuple[int | str, ...]:
    # user-agents' parse_version, without its per-part function calls: digits become ints.
    return tuple(int(p) if p.isdigit() else p for p in parts if p is not None)


class FastUserAgent(ua_parsers.UserAgent):
    """user-agents' UserAgent, parsed by ua-parser 1.x's native resolver instead of its slow
    legacy path; every classification property is inherited unchanged."""

    def __init__(self, ua_string: str) -> None:
        parsed = _parser()(ua_string, ua_parser.Domain.ALL)
        browser, os_, device = parsed.user_agent, parsed.os, parsed.device
        self.ua_string = ua_string
        if browser:
            version = _version(browser.major, browser.minor, browser.patch)
            self.browser = ua_parsers.Browser(browser.family, version, ".".join(map(str, version)))
        else:
            self.browser = ua_parsers.Browser("Other", (), "")
        if os_:
            version = _version(os_.major, os_.minor, os_.patch)
            self.os = ua_parsers.OperatingSystem(os_.family, version, ".".join(map(str, version)))
        else:
            self.os = ua_parsers.OperatingSystem("Other", (), "")
        if device:
            self.device = ua_parsers.Device(device.family, device.brand, device.model)
        else:
            self.device = ua_parsers.Device("Other", None, None)


def device_type(agent: ua_parsers.UserAgent) -> str:
    if agent.is_bot:
        return "Bot"
    kind = _kind(agent.ua_string)
    if kind:
        return kind
    if agent.is_tablet:
        return "Tablet"
    if agent.is_mobile:
        return "Mobile"
    if agent.browser.family == "Other":
        # Not a browser (an app's or a script's own user agent): the OS named in it says
        # where the code runs, not what kind of device a person holds.
        return "Unknown"
    if agent.is_pc:
        return "Desktop"
    return "Unknown"


@lru_cache(maxsize=8192)
def describe(ua_string: str) -> tuple[tuple[str, Any], ...]:
    """The stored fields for one user agent, cached: most traffic repeats a few hundred."""
    agent = FastUserAgent(ua_string)
    browser, os_ = agent.browser, agent.os
    fields: list[tuple[str, Any]] = [("device_type", device_type(agent))]
    if browser.family != "Other":
        fields.append(("browser", browser.family))
        if browser.version:
            fields.append(("browser_version", str(browser.version[0])))
    if os_.family != "Other":
        fields.append(("operating_system", os_.family))
        if os_.version:
            fields.append(("operating_system_version", ".".join(map(str, os_.version[:2]))))
    return tuple(fields)


class DeviceEnricher(Enricher):
    name = "device"

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        ua_string = event.get("user_agent") or context.headers.get("User-Agent", "")
        if not ua_string:
            event["device_type"] = "Unknown"
            return
        event.update(describe(ua_string))


@hookimpl
def register_enrichers(register: Any) -> None:
    _parser()  # build the native parser now, not on the first request
    register(DeviceEnricher())
