"""screen: device type from the screen size, only when the user agent says nothing.

``screen_width``/``screen_height`` come straight from the payload (stored by the core). Phones
have a short side under 600 logical pixels; tablets are squarish (aspect 0.66 or more: 4:3,
3:2) up to 1366 pixels; anything else is a desktop or laptop (16:10, 16:9).
"""

from __future__ import annotations

from typing import Any

from rybbit.plugin import Enricher, EnrichmentContext, hookimpl


def device_type_from_screen(width: int, height: int) -> str:
    short, long = sorted((width, height))
    if short < 600:
        return "Mobile"
    if long <= 1366 and short / long >= 0.66:
        return "Tablet"
    return "Desktop"


class ScreenEnricher(Enricher):
    name = "screen"
    after = ("device",)

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        width, height = event.get("screen_width"), event.get("screen_height")
        if width and height and event.get("device_type", "Unknown") == "Unknown":
            event["device_type"] = device_type_from_screen(width, height)


@hookimpl
def register_enrichers(register: Any) -> None:
    register(ScreenEnricher())
