"""A realistic event mix shared by the benchmarks: mostly distinct IPs, a few hundred UAs."""

from __future__ import annotations

import random
from typing import Any

PLATFORMS = [
    "Windows NT 10.0; Win64; x64",
    "Macintosh; Intel Mac OS X 10_15_7",
    "X11; Linux x86_64",
    "X11; Ubuntu; Linux x86_64",
    "Windows NT 6.1; Win64; x64",
    "X11; CrOS x86_64 14541.0.0",
]
ANDROID = [
    "Pixel 8",
    "Pixel 7a",
    "SM-S918B",
    "SM-A546B",
    "M2101K6G",
    "CPH2487",
    "SM-X700",
    "Lenovo TB-X606F",
]
BOTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
]
REFERRERS = [
    "",
    "",
    "",
    "https://www.google.com/",
    "https://t.co/abc",
    "https://news.ycombinator.com/",
    "https://www.bing.com/search?q=x",
    "https://blog.example.org/post",
    "https://shop.example.com/cart",
]
QUERIES = [
    "",
    "",
    "",
    "?utm_source=newsletter&utm_medium=email&utm_campaign=launch",
    "?gclid=abc123",
    "?utm_source=facebook&utm_medium=paid_social",
    "?ref=producthunt&x=1",
]


def user_agents(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct, realistic browser user agents (plus a few bots and apps)."""
    agents: set[str] = set(BOTS) | {"MyApp/1.0 (Linux; x64)", "MyApp/2.3 (iOS 17.4; iPhone)"}
    while len(agents) < count:
        kind = rng.random()
        major = rng.randint(100, 131)
        if kind < 0.45:
            platform = rng.choice(PLATFORMS)
            agents.add(
                f"Mozilla/5.0 ({platform}) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{major}.0.{rng.randint(1000, 6999)}.{rng.randint(10, 200)} Safari/537.36"
            )
        elif kind < 0.6:
            platform = rng.choice(PLATFORMS[:4])
            agents.add(f"Mozilla/5.0 ({platform}; rv:{major}.0) Gecko/20100101 Firefox/{major}.0")
        elif kind < 0.8:
            ios = f"{rng.randint(15, 18)}_{rng.randint(0, 6)}"
            device = rng.choice(["iPhone; CPU iPhone OS", "iPad; CPU OS"])
            agents.add(
                f"Mozilla/5.0 ({device} {ios} like Mac OS X) AppleWebKit/605.1.15 "
                f"(KHTML, like Gecko) Version/{ios.split('_')[0]}.0 Mobile/15E148 Safari/604.1"
            )
        else:
            device = rng.choice(ANDROID)
            mobile = " Mobile" if "SM-X" not in device and "TB-" not in device else ""
            agents.add(
                f"Mozilla/5.0 (Linux; Android {rng.randint(10, 14)}; {device}) AppleWebKit/537.36 "
                f"(KHTML, like Gecko) Chrome/{major}.0.{rng.randint(1000, 6999)}.{rng.randint(10, 200)}{mobile} Safari/537.36"
            )
    return sorted(agents)


def public_ip(rng: random.Random) -> str:
    while True:
        first = rng.randint(1, 223)
        if first not in (10, 100, 127, 169, 172, 192):
            return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def events(
    count: int, site_id: str, seed: int = 7, distinct_agents: int = 300
) -> list[dict[str, Any]]:
    """Validated-payload-shaped events: 90% distinct IPs, ``distinct_agents`` user agents."""
    rng = random.Random(seed)
    agents = user_agents(distinct_agents, rng)
    ips = [public_ip(rng) for _ in range(count)]
    out = []
    for i in range(count):
        ip = ips[i] if rng.random() < 0.9 else ips[rng.randrange(max(1, i))]
        event: dict[str, Any] = {
            "site_id": site_id,
            "type": "pageview",
            "pathname": f"/page/{rng.randint(1, 200)}",
            "hostname": "shop.example.com",
            "user_agent": rng.choice(agents),
            "ip_address": ip,
            "referrer": rng.choice(REFERRERS),
            "querystring": rng.choice(QUERIES),
            "language": "en",
        }
        if rng.random() < 0.5:
            event["screen_width"], event["screen_height"] = rng.choice(
                [(390, 844), (1920, 1080), (820, 1180)]
            )
        out.append(event)
    return out
