"""channel: Rybbit's traffic channel, and the referrer emptied for self-referrals.

Follows Rybbit's ``getChannel``: UTM parameters first (source, medium, campaign; ``gclid`` and
``gad_source`` mark paid traffic), then the referrer's domain against lists of search engines,
social networks, video, shopping, email and AI sites. Channels: Direct, Internal, Cross-Network,
Paid Search, Paid Social, Paid Video, Paid Shopping, Paid AI, Display, Paid Unknown,
Organic Search, Organic Social, Organic Video, Organic Shopping, AI, Email, SMS, Affiliate,
Audio, Push, Influencer, Content, Event, Referral, Unknown.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from rybbit.plugin import Enricher, EnrichmentContext, hookimpl

# Entries ending in "." match the brand under any top-level domain ("google." matches
# google.de and www.google.co.uk); others match the domain and its subdomains.
DOMAINS: dict[str, tuple[str, ...]] = {
    "ai": (
        "chatgpt.com",
        "chat.openai.com",
        "claude.ai",
        "gemini.google.com",
        "copilot.microsoft.com",
        "perplexity.ai",
        "meta.ai",
        "mistral.ai",
        "chat.mistral.ai",
        "grok.com",
        "you.com",
        "deepseek.com",
        "chat.deepseek.com",
        "poe.com",
        "pi.ai",
        "phind.com",
    ),
    "email": (
        "mail.google.com",
        "outlook.live.com",
        "outlook.office.com",
        "outlook.office365.com",
        "mail.yahoo.com",
        "mail.proton.me",
        "app.fastmail.com",
        "mail.zoho.com",
        "e.mail.ru",
        "mail.qq.com",
        "webmail.",
    ),
    "referral": (
        "accounts.google.com",
        "docs.google.com",
        "drive.google.com",
        "sites.google.com",
        "calendar.google.com",
        "classroom.google.com",
        "meet.google.com",
        "translate.google.com",
    ),
    "search": (
        "google.",
        "bing.",
        "yahoo.",
        "duckduckgo.com",
        "baidu.",
        "yandex.",
        "ya.ru",
        "ecosia.org",
        "search.brave.com",
        "startpage.com",
        "naver.com",
        "seznam.cz",
        "kagi.com",
        "qwant.com",
        "sogou.com",
        "so.com",
        "ask.com",
        "aol.",
        "search.",
    ),
    "social": (
        "facebook.com",
        "fb.com",
        "fb.me",
        "m.facebook.com",
        "l.facebook.com",
        "instagram.",
        "t.co",
        "twitter.com",
        "x.com",
        "linkedin.com",
        "lnkd.in",
        "tiktok.",
        "reddit.com",
        "t.me",
        "telegram.org",
        "wa.me",
        "whatsapp.com",
        "discord.com",
        "discord.gg",
        "medium.com",
        "threads.net",
        "mastodon.",
        "news.ycombinator.com",
        "bsky.app",
        "pinterest.",
        "snapchat.com",
        "tumblr.com",
        "vk.com",
        "weibo.com",
        "line.me",
        "ok.ru",
        "quora.com",
        "lemmy.",
    ),
    "video": (
        "youtube.com",
        "youtu.be",
        "m.youtube.com",
        "vimeo.com",
        "twitch.tv",
        "dailymotion.com",
        "netflix.com",
        "rumble.com",
        "ted.com",
        "kick.com",
        "bilibili.com",
        "iqiyi.com",
    ),
    "shopping": (
        "amazon.",
        "ebay.",
        "etsy.com",
        "walmart.com",
        "aliexpress.com",
        "shopify.com",
        "shein.com",
        "bestbuy.com",
        "ikea.com",
        "taobao.com",
        "flipkart.com",
        "mercadolibre.com",
        "allegro.pl",
        "shopee.com",
        "temu.com",
        "target.com",
    ),
}
# utm_source values that name a source outright.
SOURCE_NAMES: dict[str, tuple[str, ...]] = {
    "ai": ("chatgpt", "openai", "claude", "perplexity", "gemini", "copilot"),
    "search": ("google", "bing", "yahoo", "duckduckgo", "baidu", "yandex", "ecosia", "brave"),
    "social": (
        "facebook",
        "fb",
        "instagram",
        "ig",
        "twitter",
        "x",
        "linkedin",
        "li",
        "tw",
        "meta",
        "tiktok",
        "reddit",
        "pinterest",
        "threads",
        "bluesky",
        "mastodon",
        "snapchat",
    ),
    "video": ("youtube", "yt", "vimeo", "twitch"),
    "shopping": ("amazon", "ebay", "etsy", "shopify", "shop"),
    "email": ("email", "e-mail", "newsletter", "mailchimp", "klaviyo", "sendgrid", "brevo"),
    "sms": ("sms", "text"),
}
MEDIUMS: dict[str, tuple[str, ...]] = {
    "ai": ("ai", "llm"),
    "social": ("social", "social-media", "social_media", "sm", "social-network"),
    "video": ("video",),
    "display": ("display", "banner", "expandable", "interstitial"),
    "affiliate": ("affiliate", "affiliates", "partner"),
    "referral": ("referral", "link"),
    "email": ("email", "e-mail", "e_mail", "newsletter"),
    "push": ("push", "notification", "web-push"),
    "audio": ("audio", "podcast", "radio"),
    "influencer": ("influencer", "creator"),
    "cpc": ("cpc", "ppc", "paid-search", "paidsearch", "adwords", "sem"),
    "cpm": ("cpm",),
    "content": ("content", "blog", "article"),
    "event": ("event", "webinar", "conference"),
}
PAID_WORDS = {
    "cpc",
    "ppc",
    "cpm",
    "cpa",
    "cpv",
    "paid",
    "ad",
    "ads",
    "advertising",
    "sponsored",
    "promotion",
    "display",
    "banner",
    "sem",
    "adwords",
}
PAID_SOURCES = ("google ads", "googleads", "bing ads", "microsoft ads", "facebook ads", "meta ads")
PAID = {
    "ai": "Paid AI",
    "search": "Paid Search",
    "social": "Paid Social",
    "video": "Paid Video",
    "shopping": "Paid Shopping",
}
ORGANIC = {
    "ai": "AI",
    "search": "Organic Search",
    "social": "Organic Social",
    "video": "Organic Video",
    "shopping": "Organic Shopping",
    "email": "Email",
    "sms": "SMS",
}
BY_MEDIUM = {
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
CAMPAIGN_HINTS = (
    (re.compile(r"\bai\b|chatgpt|claude|gemini|copilot|llm"), "AI"),
    (re.compile(r"video"), "Organic Video"),
    (re.compile(r"shop|shopping"), "Organic Shopping"),
    (re.compile(r"influencer|creator|sponsored"), "Influencer"),
    (re.compile(r"event|conference|webinar"), "Event"),
    (re.compile(r"social|facebook|twitter|instagram|linkedin"), "Organic Social"),
)


def host_of(url: str) -> str:
    """The lower-case host of a URL, without "www."; "" when there is none."""
    try:
        host = urlsplit(url if "//" in url else "//" + url).hostname or ""
    except ValueError:
        return ""
    return host.removeprefix("www.")


def _matches(host: str, entry: str) -> bool:
    if entry.endswith("."):  # a brand under any TLD: a whole label
        return host.startswith(entry) or f".{entry}" in f".{host}"
    return host == entry or host.endswith("." + entry)


@lru_cache(maxsize=4096)
def source_type(value: str) -> str | None:
    """ "search", "social", ... for a referrer host or utm_source; the longest match wins."""
    value = value.lower().strip()
    if not value:
        return None
    host = host_of(value) if ("/" in value or "." in value) else ""
    best: tuple[int, str] | None = None
    if host:
        for kind, entries in DOMAINS.items():
            for entry in entries:
                if _matches(host, entry) and (best is None or len(entry) > best[0]):
                    best = (len(entry), kind)
    if best:
        return best[1]
    for kind, names in SOURCE_NAMES.items():
        if value in names:
            return kind
    return None


def medium_type(medium: str) -> str | None:
    medium = medium.lower()
    for kind, names in MEDIUMS.items():
        if medium in names:
            return kind
    return None


def is_paid(medium: str, source: str) -> bool:
    words = set(re.split(r"[^a-z0-9]+", medium.lower()))
    return bool(words & PAID_WORDS) or any(s in source.lower() for s in PAID_SOURCES)


def channel(referrer_host: str, params: dict[str, str], self_referral: bool) -> str:
    source = params.get("utm_source", "").lower()
    medium = params.get("utm_medium", "").lower()
    campaign = params.get("utm_campaign", "").lower()
    tagged = source or medium or campaign or params.get("gclid") or params.get("gad_source")
    if not tagged:
        if self_referral:
            return "Internal"
        if not referrer_host:
            return "Direct"
    kind = source_type(source or referrer_host)
    paid = is_paid(medium, source) or bool(params.get("gclid") or params.get("gad_source"))
    if campaign == "cross-network":
        return "Cross-Network"
    if not referrer_host and not medium and not campaign and source in ("", "direct", "(direct)"):
        if not paid:
            return "Direct"
    if paid:
        if kind in PAID:
            return PAID[kind]
        return PAID_BY_MEDIUM.get(medium_type(medium) or "", "Paid Unknown")
    if kind in ORGANIC:
        return ORGANIC[kind]
    by_medium = BY_MEDIUM.get(medium_type(medium) or "")
    if by_medium:
        return by_medium
    for pattern, name in CAMPAIGN_HINTS:
        if campaign and pattern.search(campaign):
            return name
    if tagged or (referrer_host and not self_referral):
        return "Referral"
    return "Unknown"


class ChannelEnricher(Enricher):
    name = "channel"
    after = ("url_params",)

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        referrer = event.get("referrer") or ""
        referrer_host = host_of(referrer) if referrer else ""
        own = {host_of(h) for h in (context.site.get("domain"), event.get("hostname")) if h}
        self_referral = bool(referrer_host) and any(
            referrer_host == h or referrer_host.endswith("." + h) for h in own
        )
        if self_referral:
            event["referrer"] = ""
        params = {k: v.lower() for k, v in (event.get("url_parameters") or {}).items()}
        event["channel"] = channel(referrer_host, params, self_referral)


@hookimpl
def register_enrichers(register: Any) -> None:
    register(ChannelEnricher())
