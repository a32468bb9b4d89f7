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

import ua_parser
import user_agents.parsers as ua_parsers

from rybbit.plugin import Enricher, EnrichmentContext, hookimpl

DEVICE_TYPES = ("Desktop", "Mobile", "Tablet", "TV", "Console", "Wearable", "Bot", "Unknown")
_TV = re.compile(
    r"SmartTV|SMART-TV|Smart TV|GoogleTV|Android TV|AndroidTV|AppleTV|Apple TV|tvOS|HbbTV|"
    r"BRAVIA|Roku|AFT[A-Z]|CrKey|Web0S|webOS.TV|NetCast|Tizen.+TV|TV Safari|Philips|SonyDTV",
    re.IGNORECASE,
)
_CONSOLE = re.compile(r"PlayStation|Xbox|Nintendo|Switch; WifiWebAuthApplet", re.IGNORECASE)
_WEARABLE = re.compile(
    r"Watch OS|watchOS|Wear OS|WearOS|SM-R\d|Apple Watch|\bWatch\b", re.IGNORECASE
)


class FastUserAgent(ua_parsers.UserAgent):
    """user-agents' UserAgent, parsed by ua-parser 1.x's native resolver instead of its slow
    legacy path; every classification property is inherited unchanged."""

    def __init__(self, ua_string: str) -> None:
        parsed = ua_parser.parser(ua_string, ua_parser.Domain.ALL)
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


def device_type(agent: ua_parsers.UserAgent) -> str:
    text = agent.ua_string
    if agent.is_bot:
        return "Bot"
    if _CONSOLE.search(text):
        return "Console"
    if _TV.search(text):
        return "TV"
    if _WEARABLE.search(text):
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
    ua_parser.parser  # noqa: B018 - builds the native parser now, not on the first request
    register(DeviceEnricher())
