"""device: browser, operating system and device type from the user agent.

Classification is user-agents' (``is_bot``, ``is_tablet``, ``is_mobile``, ``is_pc``), with two
improvements over Rybbit: tablets are their own type, and an app's own user agent such as
``MyApp/1.0 (Linux; x64)`` is not taken for a phone or a desktop browser; such events are
"Unknown" unless the screen size says more (see the screen enricher).

Browser and OS names and versions are ua-parser-js 2.x's, as Rybbit stores them
(``Mobile Chrome``, ``macOS`` ``10.15.7``; none for HTTP clients): plugins/device_names.py
maps uap-core's families and versions to them.

user-agents parses with ua-parser's legacy pure-Python path (~500 us per string). Here the
same uap-core regexes run in ua-parser 1.x's native extractors (ua-parser-rs, ~7 us for the
three of them), and user-agents' rules are applied to the extracted families directly, without
building its objects (~12 us in all; tests/test_enrichers.py checks the result against
user-agents' own code). Results are cached per user-agent string, so repeats cost a
dictionary lookup.
"""

from __future__ import annotations

import re
from functools import lru_cache
from operator import attrgetter
from typing import Any

import ua_parser
import ua_parser_rs
import user_agents.parsers

from plugins import device_names
from rybbit.plugin import Enricher, EnrichmentContext, hookimpl

DEVICE_TYPES = ("Desktop", "Mobile", "Tablet", "TV", "Console", "Wearable", "Bot", "Unknown")
# Lower-case markers of device kinds that user-agents does not tell apart. The leftmost marker
# in a user agent decides (the first listed, when several start at the same place).
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
_KIND_OF_MARKER = {marker: kind for kind, markers in _KINDS.items() for marker in markers}
# A "(compatible; Crawler/2.1; +https://...)" comment, where crawlers name themselves.
_COMPATIBLE = re.compile(r"\([^()]*compatible[^()]*\)")

# user-agents' own family lists, as frozensets for O(1) lookups: its classification, without
# building its objects.
_TABLET_DEVICES = frozenset(user_agents.parsers.TABLET_DEVICE_FAMILIES)
_MOBILE_DEVICES = frozenset(user_agents.parsers.MOBILE_DEVICE_FAMILIES)
_MOBILE_BROWSERS = frozenset(user_agents.parsers.MOBILE_BROWSER_FAMILIES)
_MOBILE_OSES = frozenset(user_agents.parsers.MOBILE_OS_FAMILIES)
_PC_OSES = frozenset(user_agents.parsers.PC_OS_FAMILIES)


def _kind(ua_string: str) -> str | None:
    """ "Console", "TV" or "Wearable" when the user agent names one, else None."""
    found = _extractors()[3](ua_string.lower())
    return _KIND_OF_MARKER[found.family] if found else None


@lru_cache(maxsize=1)
def _extractors() -> tuple[Any, Any, Any, Any]:
    """The ``extract`` functions of ua-parser-rs for browsers, OSes, devices and kinds.

    The first three are what ua-parser 1.x's RegexResolver calls, built the same way from the
    same uap-core matchers. Calling them directly skips the resolver's result objects (frozen
    dataclasses: ~4 us of the ~11 us a full parse takes); describe() only reads the fields.

    The fourth finds the leftmost kind marker: one regex whose group 1, the marker, becomes
    the result's family. Rust's regex engine has the same leftmost-first semantics as RE2 and
    Python's re, and is the cheapest to call: ~0.4 us, where google-re2's Python wrapper takes
    ~2 us and Python's re ~6 us per user agent.
    """
    browsers, oses, devices = ua_parser.load_lazy_builtins()
    fields = attrgetter("regex", "family", "major", "minor", "patch", "patch_minor")
    markers = "|".join(re.escape(marker) for marker in _KIND_OF_MARKER)
    return (
        ua_parser_rs.UserAgentExtractor(map(fields, browsers)).extract,
        ua_parser_rs.OSExtractor(map(fields, oses)).extract,
        ua_parser_rs.DeviceExtractor(
            map(attrgetter("regex", "regex_flag", "family", "brand", "model"), devices)
        ).extract,
        ua_parser_rs.UserAgentExtractor([(f"({markers})", None, None, None, None, None)]).extract,
    )


def _parts(*parts: str | None) -> tuple[str, ...]:
    """The version parts uap-core found, up to the first missing one."""
    found: list[str] = []
    for part in parts:
        if part is None:
            break
        found.append(part)
    return tuple(found)


def device_type(ua_string: str, browser: str, os_family: str, os_version: str, device: str) -> str:
    """user-agents' is_bot / is_tablet / is_mobile / is_pc, in that order, on the families
    (each "Other" when not recognised); the checks and their order are user-agents' own."""
    if device == "Spider":  # is_bot
        return "Bot"
    kind = _kind(ua_string)
    if kind:
        return kind
    # is_tablet (an Android browser without "Mobile Safari" is a tablet's, as user-agents says)
    if (
        device in _TABLET_DEVICES
        or (
            os_family == "Android"
            and "Mobile Safari" not in ua_string
            and browser != "Firefox Mobile"
        )
        or (os_family == "Windows" and os_version.startswith("RT"))
        or (os_family == "Firefox OS" and "Mobile" not in browser)
    ):
        return "Tablet"
    # is_mobile; its "Android or Firefox OS, and not a tablet" holds here for both, and its
    # "Spider with a mobile browser" cannot (spiders are bots above).
    if (
        device in _MOBILE_DEVICES
        or browser in _MOBILE_BROWSERS
        or os_family == "Android"
        or os_family == "Firefox OS"
        or (os_family == "BlackBerry OS" and device != "Blackberry Playbook")
        or os_family in _MOBILE_OSES
        or "J2ME" in ua_string
        or "MIDP" in ua_string
        or "iPhone;" in ua_string
        or "Googlebot-Mobile" in ua_string
        or ("NokiaBrowser" in ua_string and "Mobile" in ua_string)
    ):
        return "Mobile"
    if browser == "Other":
        # Not a browser (an app's or a script's own user agent): the OS named in it says
        # where the code runs, not what kind of device a person holds.
        return "Unknown"
    # is_pc
    if (
        "Windows NT" in ua_string
        or os_family in _PC_OSES
        or (os_family == "Windows" and os_version == "ME")
        or (os_family == "Mac OS X" and "Silk" not in ua_string)
    ):
        return "Desktop"
    if "Maemo" in ua_string:
        return "Unknown"
    if "Chrome OS" in os_family or ("Linux" in ua_string and "X11" in ua_string):
        return "Desktop"
    return "Unknown"


@lru_cache(maxsize=8192)
def describe(ua_string: str) -> tuple[tuple[str, Any], ...]:
    """The stored fields for one user agent, cached: most traffic repeats a few hundred.

    device_type follows user-agents' rules on uap-core's families; the browser and OS fields
    are named and versioned as ua-parser-js gives them, which is what Rybbit stores."""
    extract_browser, extract_os, extract_device, _ = _extractors()
    found_browser = extract_browser(ua_string)
    found_os = extract_os(ua_string)
    device = extract_device(ua_string)
    browser_family = found_browser.family if found_browser else "Other"
    os_family, os_version = "Other", ()
    if found_os:
        os_family = found_os.family
        os_version = _parts(found_os.major, found_os.minor, found_os.patch, found_os.patch_minor)
    fields: list[tuple[str, Any]] = [
        (
            "device_type",
            device_type(
                ua_string,
                browser_family,
                os_family,
                ".".join(os_version[:3]),
                device.family if device else "Other",
            ),
        )
    ]
    name, major = device_names.browser(
        ua_string, browser_family, found_browser.major if found_browser else None
    )
    hiding = device_names.token_hiding_the_browser(
        ua_string, browser_family, device is not None and device.family == "Spider"
    )
    if hiding:
        behind = extract_browser(_COMPATIBLE.sub("", ua_string).replace(hiding, ""))
        if behind:
            name, major = device_names.browser(ua_string, behind.family, behind.major)
    if name:
        fields.append(("browser", name))
        if major:
            fields.append(("browser_version", major))
    name, version = device_names.operating_system(ua_string, os_family, os_version)
    if name:
        fields.append(("operating_system", name))
        if version:
            fields.append(("operating_system_version", version))
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
    _extractors()  # build the native extractors now, not on the first request
    register(DeviceEnricher())
