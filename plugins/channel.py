"""channel: Rybbit's traffic channel, and the referrer emptied for same-host navigation.

Computed as Rybbit's tracker does (``getChannel`` and ``clearSelfReferrer``; the lists are in
plugins/channel_lists.py):

- A referrer whose host is the event's ``hostname``, exactly, is emptied first; the event is
  then Direct unless UTM parameters say more. A referrer from another host of the same site
  (``www.`` or a subdomain) is kept, and such an event is never Referral.
- UTM parameters are the ``querystring``'s keys that start with ``utm_`` in lower case
  (``utm_Source`` counts as ``utm_source``; ``UTM_SOURCE`` does not count), plus ``gclid`` and
  ``gad_source``; their values are compared in lower case, the last of a repeated key winning.
- A referrer's host is taken as a WHATWG URL parser takes it (Ada, the parser inside Node's
  ``URL``): a referrer that does not parse as an absolute URL counts as none.

Channels: Direct, Internal, Cross-Network, Paid Search, Paid Social, Paid Video,
Paid Shopping, Paid AI, Display, Paid Influencer, Paid Audio, Paid Unknown, Organic Search,
Organic Social, Organic Video, Organic Shopping, AI, Email, SMS, News, Productivity,
Affiliate, Referral, Audio, Push, Influencer, Content, Event, Unknown.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import ada_url

from plugins.channel_lists import (
    APP_IDS,
    DOMAINS,
    MEDIUMS,
    PAID_MEDIUM_PARTS,
    PAID_SOURCE_PARTS,
    SOURCES,
)
from rybbit.plugin import Enricher, EnrichmentContext, hookimpl

NO_REFERRER = "$direct"  # Rybbit's referring domain for no or an unparsable referrer
_APP_ID = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
_APP_ID_KIND = {app_id: kind for kind, ids in APP_IDS for app_id in ids}
_APP_CHANNELS = {
    "social": "Organic Social",
    "video": "Organic Video",
    "ai": "AI",
    "search": "Organic Search",
    "email": "Email",
    "shopping": "Organic Shopping",
    "news": "News",
    "productivity": "Productivity",
}
PAID_BY_SOURCE = {
    "ai": "Paid AI",
    "search": "Paid Search",
    "social": "Paid Social",
    "video": "Paid Video",
    "shopping": "Paid Shopping",
}
PAID_BY_MEDIUM = {
    "ai": "Paid AI",
    "social": "Paid Social",
    "video": "Paid Video",
    "display": "Display",
    "cpm": "Display",
    "cpc": "Paid Search",
    "influencer": "Paid Influencer",
    "audio": "Paid Audio",
}
ORGANIC_BY_SOURCE = {
    "ai": "AI",
    "search": "Organic Search",
    "social": "Organic Social",
    "video": "Organic Video",
    "shopping": "Organic Shopping",
    "email": "Email",
    "sms": "SMS",
    "news": "News",
    "productivity": "Productivity",
}
ORGANIC_BY_MEDIUM = {
    "ai": "AI",
    "social": "Organic Social",
    "video": "Organic Video",
    "affiliate": "Affiliate",
    "referral": "Referral",
    "display": "Display",
    "audio": "Audio",
    "push": "Push",
    "influencer": "Influencer",
    "content": "Content",
    "event": "Event",
    "email": "Email",
}
# utm_campaign words, last resort; ASCII word boundaries as in JavaScript.
CAMPAIGN_HINTS = tuple(
    (re.compile(pattern, re.ASCII), name)
    for pattern, name in (
        (r"\bai\b|chatgpt|claude|gemini|copilot|llm", "AI"),
        (r"video", "Organic Video"),
        (r"shop|shopping", "Organic Shopping"),
        (r"influencer|creator|sponsored", "Influencer"),
        (r"event|conference|webinar", "Event"),
        (r"social|facebook|twitter|instagram|linkedin", "Organic Social"),
    )
)


@lru_cache(maxsize=4096)
def referring_domain(referrer: str) -> str:
    """The referrer URL's host as ``new URL(referrer).hostname`` gives it; NO_REFERRER for no
    referrer or one that is not an absolute URL."""
    if not referrer:
        return NO_REFERRER
    try:
        return str(ada_url.parse_url(referrer, attributes=("hostname",))["hostname"])
    except ValueError:
        return NO_REFERRER


def utm_params(querystring: str) -> dict[str, str]:
    """utm_* keys (as sent lower-case ``utm_``, then lower-cased whole), gclid and gad_source,
    values lower-cased; form-decoded as URLSearchParams decodes them."""
    params: dict[str, str] = {}
    for key, value in parse_qsl(querystring.removeprefix("?"), keep_blank_values=True):
        if key.startswith("utm_") or key in ("gclid", "gad_source"):
            params[key.lower()] = value.lower()
    return params


def is_self_referral(domain: str, hostname: str) -> bool:
    """The referring domain is the page's host or one of its subdomains, ``www.`` aside."""
    if not domain or not hostname:
        return False
    domain, hostname = domain.removeprefix("www."), hostname.removeprefix("www.")
    return domain == hostname or domain.endswith("." + hostname)


@lru_cache(maxsize=4096)
def source_type(source: str) -> str:
    """ "ai", "search", "social", ... for a utm_source or referring domain; "mobile-app" for
    an unknown app id, "direct" for anything else."""
    lowered = source.lower()
    for kind, domains in DOMAINS:
        if any(domain in lowered for domain in domains):
            return kind
    for kind, names in SOURCES:
        if lowered in names:
            return kind
    if _APP_ID.match(source):
        return _APP_ID_KIND.get(source, "mobile-app")
    return "direct"


def medium_type(medium: str) -> str:
    lowered = medium.lower()
    for kind, names in MEDIUMS:
        if lowered in names:
            return kind
    return "organic"


def is_paid(medium: str, source: str) -> bool:
    medium, source = medium.lower(), source.lower()
    return any(part in medium for part in PAID_MEDIUM_PARTS) or any(
        part in source for part in PAID_SOURCE_PARTS
    )


def app_channel(app_id: str) -> str | None:
    """The channel of a utm_source that is an app id containing a known one."""
    lowered = app_id.lower()
    for kind, ids in APP_IDS:
        if any(known in lowered for known in ids):
            return _APP_CHANNELS[kind]
    return None


def channel(referrer: str, querystring: str, hostname: str) -> str:
    """Rybbit's channel for a (self-referrer-cleared) referrer, querystring and hostname."""
    return _channel(bool(referrer), referring_domain(referrer), querystring, hostname)


# Of the referrer only whether there is one and its host count, so events from one campaign
# link or one referring site share an answer: 7 us an event, ~1 when it is known. 2048 keys
# of up to ~2 kB (the querystring's limit) at most.
@lru_cache(maxsize=2048)
def _channel(referrer: bool, domain: str, querystring: str, hostname: str) -> str:
    utm = utm_params(querystring)
    self_referral = is_self_referral(domain, hostname)
    source = utm.get("utm_source", "")
    medium = utm.get("utm_medium", "")
    campaign = utm.get("utm_campaign", "")
    click_id = utm.get("gclid", "") or utm.get("gad_source", "")

    if source and _APP_ID.match(source):
        found = app_channel(source)
        if found:
            return found
    if not (referrer or source or medium or campaign or click_id):
        return "Direct"

    kind = source_type(source or domain)
    medium_kind = medium_type(medium)
    if campaign == "cross-network":
        return "Cross-Network"
    if (
        (domain == NO_REFERRER or (not referrer and not self_referral))
        and not medium
        and not campaign
        and source in ("", "direct", "(direct)")
    ):
        return "Direct"
    if is_paid(medium, source) or click_id:
        return PAID_BY_SOURCE.get(kind) or PAID_BY_MEDIUM.get(medium_kind, "Paid Unknown")
    organic = ORGANIC_BY_SOURCE.get(kind) or ORGANIC_BY_MEDIUM.get(medium_kind)
    if organic:
        return organic
    for pattern, name in CAMPAIGN_HINTS:
        if pattern.search(campaign):
            return name
    if (source or medium or campaign or domain != NO_REFERRER) and not self_referral:
        return "Referral"
    return "Unknown"


def clear_self_referrer(referrer: str, hostname: str) -> str:
    """The referrer, emptied when its host is exactly the page's (navigation within the site)."""
    if referrer and hostname and hostname != NO_REFERRER:
        if referring_domain(referrer) == hostname:
            return ""
    return referrer


class ChannelEnricher(Enricher):
    name = "channel"
    after = ("url_params",)  # keeps the chain's documented order; channel reads none of it

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        hostname = event.get("hostname") or ""
        referrer = clear_self_referrer(event.get("referrer") or "", hostname)
        if "referrer" in event:
            event["referrer"] = referrer
        event["channel"] = channel(referrer, event.get("querystring") or "", hostname)


@hookimpl
def register_enrichers(register: Any) -> None:
    register(ChannelEnricher())
