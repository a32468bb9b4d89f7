"""The channel enricher: Rybbit's channel and self-referrer rule, case by case.

The first cases are Rybbit's own (getChannel.test.ts and getChannel's documented example);
the rest pin the rules of its getChannel, clearSelfReferrer and getUTMParams that dashboards
grouping by channel depend on, quirks included (domains match as substrings of the host).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from plugins.channel import channel, clear_self_referrer, referring_domain, utm_params

# (referrer, querystring, hostname, channel): Rybbit's tests call getChannel directly, with
# the referrer not yet cleared.
RYBBITS_OWN = [
    ("", "utm_source=my_app&utm_medium=custom", "", "Referral"),
    ("", "utm_source=gsuite_extension", "", "Referral"),
    ("", "utm_medium=custom_link", "", "Referral"),
    ("", "utm_campaign=custom_campaign", "", "Referral"),
    ("", "", "", "Direct"),
    ("https://external-site.com/blog", "", "", "Referral"),
    ("https://example.com/page", "utm_source=custom_source", "example.com", "Unknown"),
    (
        "https://google.com/search?q=example",
        "utm_source=google&utm_medium=cpc&utm_campaign=brand",
        "",
        "Paid Search",
    ),
]

# The same through Rybbit's pipeline: clearSelfReferrer, then getChannel.
CASES = [
    # Referrers by kind of site.
    ("https://www.google.com/", "", "shop.example.com", "Organic Search"),
    ("https://www.google.co.uk/search?q=x", "", "shop.example.com", "Organic Search"),
    ("https://duckduckgo.com/", "", "shop.example.com", "Organic Search"),
    ("https://t.co/xyz", "", "shop.example.com", "Organic Social"),
    ("https://www.reddit.com/r/x", "", "shop.example.com", "Organic Social"),
    ("https://www.amazon.de/", "", "shop.example.com", "Organic Shopping"),
    ("https://vimeo.com/1", "", "shop.example.com", "Organic Video"),
    ("https://chatgpt.com/", "", "shop.example.com", "AI"),
    ("https://www.perplexity.ai/search", "", "shop.example.com", "AI"),
    ("https://blog.example.org/post", "", "shop.example.com", "Referral"),
    # Rybbit matches listed domains as substrings of the host, in the order AI, search,
    # social, video, shopping: YouTube is social, dropbox.com ends in "x.com", microsoft.com
    # holds "t.co", docs.google.com holds "google.", a Gmail app referrer "google." too.
    ("https://www.youtube.com/watch?v=1", "", "shop.example.com", "Organic Social"),
    ("https://www.dropbox.com/s/1", "", "shop.example.com", "Organic Social"),
    ("https://learn.microsoft.com/", "", "shop.example.com", "Organic Social"),
    ("https://docs.google.com/document/d/1", "", "shop.example.com", "Organic Search"),
    ("android-app://com.google.android.gm/", "", "shop.example.com", "Organic Search"),
    ("https://mail.google.com/", "", "shop.example.com", "Organic Search"),
    # A referrer that is no absolute URL counts as none.
    ("google.com", "", "shop.example.com", "Direct"),
    ("/relative/path", "?utm_medium=email", "shop.example.com", "Email"),
    # UTM parameters: keys must start with a lower-case "utm_"; values any case.
    ("", "?utm_source=google&utm_medium=cpc", "", "Paid Search"),
    ("", "?utm_Source=Google&utm_MEDIUM=CPC", "", "Paid Search"),
    ("", "?UTM_SOURCE=google&UTM_MEDIUM=cpc", "", "Direct"),
    ("", "?Utm_source=newsletter&utm_medium=email", "", "Email"),
    ("", "?utm_source=google&utm_Source=facebook&utm_medium=cpc", "", "Paid Social"),
    ("", "?utm_source=news+letter&utm_medium=e%2Dmail", "", "Email"),
    ("https://www.google.com/", "?gclid=abc", "shop.example.com", "Paid Search"),
    ("https://www.google.com/", "?GCLID=abc", "shop.example.com", "Organic Search"),
    ("https://www.google.com/", "?gclid=", "shop.example.com", "Organic Search"),
    # Paid markers without a referrer or source: Rybbit's Direct rule comes first.
    ("", "?gad_source=1", "", "Direct"),
    ("", "?utm_source=partner&utm_medium=cpc", "", "Paid Search"),
    ("", "?utm_source=facebook&utm_medium=paid_social", "", "Paid Social"),
    ("", "?utm_source=partner&utm_medium=broadcast", "", "Paid Video"),
    ("", "?utm_source=github&utm_medium=readme", "", "Paid Unknown"),
    ("", "?utm_source=newsletter&utm_medium=email", "", "Email"),
    ("", "?utm_source=sms", "", "SMS"),
    ("", "?utm_source=partner&utm_medium=affiliate", "", "Affiliate"),
    ("", "?utm_source=adnet&utm_medium=display", "", "Display"),
    ("", "?utm_source=x&utm_medium=podcast", "", "Audio"),
    ("", "?utm_campaign=cross-network", "", "Cross-Network"),
    ("", "?utm_source=direct", "", "Direct"),
    ("", "?utm_source=(direct)&utm_campaign=spring", "", "Referral"),
    ("", "?utm_campaign=summer-video-push", "", "Organic Video"),
    ("", "?utm_campaign=ai-launch", "", "AI"),
    ("", "?utm_campaign=daily", "", "Referral"),
    # Mobile app ids as utm_source.
    ("", "?utm_source=com.reddit.frontpage", "", "Organic Social"),
    ("", "?utm_source=com.google.android.gm", "", "Email"),
    ("", "?utm_source=com.bbc.news", "", "News"),
    ("", "?utm_source=com.notion.id", "", "Productivity"),
    ("", "?utm_source=com.example.app", "", "Referral"),
    # Self-referrals: the page's own host exactly is emptied first, so Direct; another host
    # of the site is kept and never counts as Referral.
    ("https://shop.example.com/other", "", "shop.example.com", "Direct"),
    ("https://shop.example.com/other", "?utm_source=newsletter", "shop.example.com", "Email"),
    ("https://www.example.com/", "", "example.com", "Unknown"),
    ("https://blog.example.com/", "", "example.com", "Unknown"),
    ("https://example.com/page", "utm_source=custom_source", "example.com", "Referral"),
    ("https://www.example.com/page", "utm_source=custom_source", "example.com", "Unknown"),
    ("https://Shop.Example.com/", "", "shop.example.com", "Direct"),
    ("https://shop.example.com/", "", "Shop.example.com", "Referral"),
]


def _ids(cases: list[tuple[str, str, str, str]]) -> list[str]:
    return [f"{c[3]}:{c[0] or c[1] or 'nothing'}@{c[2]}" for c in cases]


@pytest.mark.parametrize(
    ("referrer", "querystring", "hostname", "expected"), RYBBITS_OWN, ids=_ids(RYBBITS_OWN)
)
def test_rybbits_own_cases(referrer: str, querystring: str, hostname: str, expected: str) -> None:
    assert channel(referrer, querystring, hostname) == expected


@pytest.mark.parametrize(
    ("referrer", "querystring", "hostname", "expected"), CASES, ids=_ids(CASES)
)
def test_channel_as_rybbit_computes_it(
    referrer: str, querystring: str, hostname: str, expected: str
) -> None:
    assert channel(clear_self_referrer(referrer, hostname), querystring, hostname) == expected


def test_answers_kept_for_reuse_are_each_cases_own() -> None:
    """channel keeps answers by the referrer's host, not the referrer: asked again, in the
    other order, after every other case, each case still gets its own channel."""
    for _ in range(2):
        asked = [channel(clear_self_referrer(r, h), q, h) for r, q, h, _ in reversed(CASES)]
        assert asked[::-1] == [expected for *_, expected in CASES]
        own = [channel(r, q, h) for r, q, h, _ in reversed(RYBBITS_OWN)]
        assert own[::-1] == [expected for *_, expected in RYBBITS_OWN]


@pytest.mark.parametrize(
    ("referrer", "hostname", "kept"),
    [
        ("https://shop.example.com/a?b=c", "shop.example.com", ""),
        ("https://SHOP.example.com/a", "shop.example.com", ""),
        ("https://www.shop.example.com/a", "shop.example.com", "https://www.shop.example.com/a"),
        ("https://shop.example.com/a", "", "https://shop.example.com/a"),
        ("shop.example.com/a", "shop.example.com", "shop.example.com/a"),
        ("https://google.com/", "shop.example.com", "https://google.com/"),
    ],
)
def test_only_the_pages_own_host_is_cleared(referrer: str, hostname: str, kept: str) -> None:
    assert clear_self_referrer(referrer, hostname) == kept


@pytest.fixture
def app_config(mongo_uri: str | None, instance_path: Path) -> dict[str, Any]:
    return {"TESTING": True, "MONGO_URI": mongo_uri, "LOAD_PLUGINS": [], "RATE_LIMIT": "off"}


@pytest.mark.parametrize(
    ("fields", "channel_", "referrer"),
    [
        (
            {"hostname": "shop.example.com", "referrer": "https://shop.example.com/cart"},
            "Direct",
            "",
        ),
        (
            {"hostname": "shop.example.com", "referrer": "https://www.google.com/"},
            "Organic Search",
            "https://www.google.com/",
        ),
        (
            {"hostname": "example.com", "referrer": "https://www.example.com/"},
            "Unknown",
            "https://www.example.com/",
        ),
        ({"querystring": "?UTM_SOURCE=google&UTM_MEDIUM=cpc"}, "Direct", None),
        ({"querystring": "?utm_source=Google&utm_medium=CPC"}, "Paid Search", None),
    ],
)
def test_stored_channel_and_referrer(
    post: Any,
    stored_events: Any,
    fields: dict[str, str],
    channel_: str,
    referrer: str | None,
) -> None:
    assert post(**fields).status_code == 200
    event = dict(stored_events()[-1])
    assert event["channel"] == channel_
    assert event.get("referrer") == referrer


ODD_REFERRERS = [
    "https://WWW.Example.COM:8443/a?b#c",
    " https://padded.example.com/ ",
    "https:\\\\backslash.example.com\\path",
    "http://user:pass@auth.example.com/",
    "https://xn--bcher-kva.example/",
    "https://bücher.example/",
    "https://[2001:db8::1]/",
    "https://192.168.0.1:80/",
    "android-app://com.Google.Android.gm/",
    "mailto:someone@example.com",
    "example.com/no-scheme",
    "//protocol-relative.example.com/",
    "https://",
    "https://exa mple.com/",
    "HTTPS://UPPER.EXAMPLE.COM",
]
ODD_QUERYSTRINGS = [
    "?utm_source=A+B&utm_medium=%41%42",
    "utm_source=x&utm_source=y",
    "?utm_Source=x&UTM_SOURCE=y&utm_source",
    "??utm_source=double",
    "?utm_source=%E2%82%AC&utm_medium=%ZZ&utm_campaign=%C3",
    "&&utm_source=a&&",
    "?gclid=&gad_source=0",
    "?utm_source=a=b",
]


def test_url_parsing_matches_nodes() -> None:
    """Referrer hosts and UTM parameters come out as Node's URL and URLSearchParams give
    them, which Rybbit's getChannel reads."""
    script = (
        "const d = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "const host = r => { try { return new URL(r).hostname } catch { return '$direct' } };"
        "const utm = q => { const p = {}; for (const [k, v] of new URLSearchParams(q))"
        " if (k.startsWith('utm_') || k === 'gclid' || k === 'gad_source')"
        " p[k.toLowerCase()] = v.toLowerCase(); return p };"
        "process.stdout.write(JSON.stringify([d.r.map(host), d.q.map(utm)]));"
    )
    done = subprocess.run(
        ["node", "-e", script],
        input=json.dumps({"r": ODD_REFERRERS, "q": ODD_QUERYSTRINGS}),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    hosts, params = json.loads(done.stdout)
    assert [referring_domain(r) for r in ODD_REFERRERS] == hosts
    assert [utm_params(q) for q in ODD_QUERYSTRINGS] == params
