"""Browser and OS names and versions as Rybbit stores them.

Rybbit parses user agents with ua-parser-js 2.x and stores ``browser.name``, ``browser.major``,
``os.name`` and ``os.version``. The device enricher parses with uap-core's regexes in
ua-parser-rs (native, a few microseconds per user agent), and this module turns uap-core's
families and versions into ua-parser-js's: a table of names and a few rules. (The Python port
ua-parser-py follows ua-parser-js 1.x: on the test corpus it agrees with 2.x on 281 of 419
user agents, against 392 here, at ~1.4 ms per user agent.)
tests/test_device_parity.py checks the result against ua-parser-js itself on a corpus of a
few hundred user agents.

Families missing from the tables get no name: uap-core names every ``Product/1.0`` token and
crawler it meets (``python-requests``, ``okhttp``, ``Googlebot``, an app's own name), where
ua-parser-js names only browsers, so HTTP clients and apps are stored without a browser, as
Rybbit stores them.
"""

from __future__ import annotations

import re

# uap-core browser family -> ua-parser-js browser name.
BROWSERS = {
    "Chrome": "Chrome",
    "Chrome Mobile": "Mobile Chrome",
    "Chrome Mobile iOS": "Mobile Chrome",
    "Chrome Mobile WebView": "Chrome WebView",
    "HeadlessChrome": "Chrome Headless",
    "Chromium": "Chromium",
    "Firefox": "Firefox",
    "Firefox Mobile": "Mobile Firefox",
    "Firefox iOS": "Mobile Firefox",
    "Safari": "Safari",
    "Mobile Safari": "Mobile Safari",
    "Edge": "Edge",
    "Edge Mobile": "Edge",
    "IE": "IE",
    "IE Mobile": "IEMobile",
    "Opera": "Opera",
    "Opera Mobile": "Opera",
    "Opera Mini": "Opera Mini",
    "Opera Touch": "Opera Touch",
    "Opera GX": "Opera GX",
    "Samsung Internet": "Samsung Internet",
    "Yandex Browser": "Yandex",
    "UC Browser": "UCBrowser",
    "QQ Browser": "QQBrowser",
    "MiuiBrowser": "MIUI Browser",
    "Huawei Browser": "Huawei Browser",
    "DuckDuckGo Mobile": "DuckDuckGo",
    "Brave": "Brave",
    "Vivaldi": "Vivaldi",
    "Whale": "Whale",
    "Coc Coc": "Coc Coc",
    "Pale Moon": "PaleMoon",
    "Avast Secure Browser": "Avast Secure Browser",
    "Amazon Silk": "Silk",
    "Electron": "Electron",
    "Maemo Browser": "Maemo Browser",
    "Facebook": "Facebook",
    "Instagram": "Instagram",
    "TikTok": "TikTok",
    "Twitter": "Twitter",
    "Snapchat": "Snapchat",
    "WeChat Browser": "WeChat",
    "Google": "GSA",
    "Android": "Android Browser",
}

# uap-core OS family -> ua-parser-js OS name.
OSES = {
    "Windows": "Windows",
    "Mac OS X": "macOS",
    "iOS": "iOS",
    "Android": "Android",
    "Chrome OS": "Chrome OS",
    "Linux": "Linux",
    "Ubuntu": "Ubuntu",
    "Fedora": "Fedora",
    "Debian": "Debian",
    "FreeBSD": "FreeBSD",
    "OpenBSD": "OpenBSD",
    "Solaris": "Solaris",
    "Tizen": "Tizen",
    "Web0S": "webOS",
    "Chromecast Linux": "Chromecast Linux",
    "Maemo": "Maemo",
    "MeeGo": "MeeGo",
    "Firefox OS": "Firefox OS",
    "WatchOS": "watchOS",
    "BlackBerry OS": "BlackBerry",
    "BlackBerry Tablet OS": "RIM Tablet OS",
    "Symbian OS": "Symbian",
}

# uap-core families (a web view, a mail client, a crawler) that ua-parser-js reads as WebKit.
_FALLBACK_TO_WEBKIT = frozenset({"Mobile Safari UI/WKWebView", "Other", "Apple Mail", "GPTBot"})
_WEBKIT = re.compile(r"AppleWebKit/(\d+)")
_ANDROID_BROWSER_VERSION = re.compile(r"Version/(\d+)")
# iOS as ua-parser-js recognises it: an iPhone, iPad or iPod platform token, or iOS in one.
_IOS_PLATFORM = re.compile(r"\((?:iPhone|iPad|iPod)[;) ]|iPhone OS \d|; iOS \d")
# Game consoles, which ua-parser-js names as the OS (even where uap-core sees Windows).
_CONSOLE = re.compile(
    r"\b(PlayStation)[ ;]+(?:PlayStation )?(\d|Vita)\b"
    r"|\b(Xbox); (?:Xbox )?(One|Series [XS])\b"
    r"|\b(Nintendo) (Switch|WiiU|3DS)\b"
)


def browser(ua: str, family: str, major: str | None) -> tuple[str, str]:
    """(name, major version) of the browser as ua-parser-js gives them, "" when it gives none."""
    name = BROWSERS.get(family)
    if family == "Mobile Safari UI/WKWebView" and "[LinkedInApp]" in ua:
        return "LinkedIn", ""  # LinkedIn's in-app browser, which ua-parser-js gives no version
    if family == "Android":
        # The stock Android browser: ua-parser-js needs and reads its Version/ token, so the
        # Dalvik HTTP client (uap-core's "Android") is no browser.
        found = _ANDROID_BROWSER_VERSION.search(ua)
        return (name or "", found.group(1)) if found else ("", "")
    if name:
        return name, major or ""
    if family not in _FALLBACK_TO_WEBKIT:
        return "", ""
    # No browser token but WebKit's: ua-parser-js names the engine.
    found = _WEBKIT.search(ua)
    return ("WebKit", found.group(1)) if found else ("", "")


def token_hiding_the_browser(ua: str, family: str, is_crawler: bool) -> str | None:
    """The token of ``ua`` that uap-core names but ua-parser-js looks past to a browser behind
    it: a crawler's name (``Googlebot/2.1`` in front of ``Chrome/124 Mobile Safari``), or the
    Google app's ``GSA/`` on Android (on iOS ua-parser-js names it GSA)."""
    if is_crawler and family not in BROWSERS:
        return family
    if family == "Google" and "Android" in ua:
        return "GSA/"
    return None


def operating_system(ua: str, family: str, version: tuple[str, ...]) -> tuple[str, str]:
    """(name, version) of the OS as ua-parser-js gives them: the version whole (``10.15.7``,
    ``14541.0.0``), not cut to major.minor."""
    # The substring tests spare the other 99.9% of agents the regex (~10 us: its alternatives
    # are tried at every position).
    console = (
        _CONSOLE.search(ua) if "PlayStation" in ua or "Xbox" in ua or "Nintendo" in ua else None
    )
    if console:
        console_name, console_version = (part for part in console.groups() if part)
        return console_name, console_version
    name = OSES.get(family)
    if family == "Windows Phone":
        name = "Windows Phone OS" if "Windows Phone OS" in ua else None
    if not name:
        return "", ""
    if family == "iOS":
        if not _IOS_PLATFORM.search(ua):
            # Apps' own user agents ("MyApp/1 CFNetwork/1410 Darwin/22.6.0", "Spotify/8.9
            # iOS/17.4"): uap-core infers iOS, ua-parser-js names no OS or no version.
            return ("iOS", "") if "CFNetwork/" in ua else ("", "")
    elif family == "Android" and "HarmonyOS" in ua:
        name = "HarmonyOS"
    return name, ".".join(version)
