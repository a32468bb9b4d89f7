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

from functools import lru_cache
from typing import Any

import ua_parser
import user_agents.parsers as ua_parsers

from rybbit.plugin import Enricher, EnrichmentContext, hookimpl

DEVICE_TYPES = ("Desktop", "Mobile", "Tablet", "TV", "Console", "Wearable", "Bot", "Unknown")
# Lower-case markers, checked as substrings: one lower() and a few `in` tests cost ~1 us,
# where case-insensitive regular expressions over the same alternatives cost ~30 us.
_CONSOLE = ("playstation", "xbox", "nintendo")
_TV = (
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
)
_WEARABLE = ("watch os", "watchos", "wear os", "wearos", "apple watch", "; sm-r", " watch")


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


class FastUserAgent(ua_parsers.UserAgent):
    """user-agents' UserAgent, parsed by ua-parser 1.x's native resolver instead of its slow
    legacy path; every classification property is inherited unchanged."""

    def __init__(self, ua_string: str) -> None:
        parsed = _parser()(ua_string, ua_parser.Domain.ALL)
        browser, os_, device = parsed.user_agent, parsed.os, parsed.device
        self.ua_string = ua_string
        self.os = (
            ua_parsers.parse_operating_system(os_.family, os_.major, os_.minor, os_.patch)
            if os_
            else ua_parsers.parse_operating_system("Other")
        )
        self.browser = (
            ua_parsers.parse_browser(browser.family, browser.major, browser.minor, browser.patch)
            if browser
            else ua_parsers.parse_browser("Other")
        )
        self.device = (
            ua_parsers.parse_device(device.family, device.brand, device.model)
            if device
            else ua_parsers.parse_device("Other", None, None)
        )


def _has(text: str, markers: tuple[str, ...]) -> bool:
    return any(marker in text for marker in markers)


def device_type(agent: ua_parsers.UserAgent) -> str:
    text = agent.ua_string.lower()
    if agent.is_bot:
        return "Bot"
    if _has(text, _CONSOLE):
        return "Console"
    if _has(text, _TV):
        return "TV"
    if _has(text, _WEARABLE):
        return "Wearable"
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
    fields: dict[str, Any] = {"device_type": device_type(agent)}
    if agent.browser.family != "Other":
        fields["browser"] = agent.browser.family
        if agent.browser.version:
            fields["browser_version"] = str(agent.browser.version[0])
    if agent.os.family != "Other":
        fields["operating_system"] = agent.os.family
        if agent.os.version:
            fields["operating_system_version"] = ".".join(str(v) for v in agent.os.version[:2])
    return tuple(fields.items())


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
