"""Date ranges and time buckets in a site's time zone.

Relative ranges follow Plausible's rules: ``day`` is today, ``7d`` today and the six days
before, ``30d`` today and the 29 before, ``month`` the current calendar month, ``6mo`` and
``12mo`` the current month and the 5 or 11 before it, ``year`` the current calendar year,
``all`` from the day of the site's first event to today. A custom range is two ISO dates (both
days included) or two ISO date-times with offsets (start included, end excluded).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

RELATIVE = ("day", "7d", "30d", "month", "6mo", "12mo", "year", "all")
GRANULARITIES = ("hour", "day", "week", "month")
_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Period:
    """``[start, end)`` in UTC, and the zone its days and buckets are counted in."""

    start: datetime
    end: datetime
    zone: ZoneInfo

    @property
    def days(self) -> float:
        return (self.end - self.start) / timedelta(days=1)


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _month_end(day: date) -> date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def resolve(
    value: str | list[str], zone: ZoneInfo, now: datetime, first_event: datetime | None
) -> Period:
    """The period a validated ``date_range`` names, as of ``now``."""
    today = now.astimezone(zone).date()
    if isinstance(value, list):
        first, last = value
        if "T" in first:  # validated: both date-times, with offsets
            return Period(
                datetime.fromisoformat(first).astimezone(UTC),
                datetime.fromisoformat(last).astimezone(UTC),
                zone,
            )
        start_day, end_day = date.fromisoformat(first), date.fromisoformat(last)
    elif value == "day":
        start_day = end_day = today
    elif value == "7d":
        start_day, end_day = today - timedelta(days=6), today
    elif value == "30d":
        start_day, end_day = today - timedelta(days=29), today
    elif value == "month":
        start_day, end_day = today.replace(day=1), _month_end(today)
    elif value in ("6mo", "12mo"):
        back = 5 if value == "6mo" else 11
        start_day, end_day = _add_months(today, -back), _month_end(today)
    elif value == "year":
        start_day, end_day = date(today.year, 1, 1), date(today.year, 12, 31)
    else:  # all
        start_day = first_event.astimezone(zone).date() if first_event else today
        end_day = max(today, start_day)
    return Period(_midnight(start_day, zone), _midnight(end_day + timedelta(days=1), zone), zone)


def auto_granularity(period: Period) -> str:
    """What the ``time`` dimension means for this period (as Plausible picks it)."""
    if period.days <= 1:
        return "hour"
    if period.days <= 40:
        return "day"
    return "month"


def label(moment: datetime, granularity: str) -> str:
    """The bucket label of a local time: Plausible's formats."""
    if granularity == "hour":
        return moment.strftime("%Y-%m-%d %H:00:00")
    day = moment.date()
    if granularity == "week":
        day -= timedelta(days=day.weekday())  # weeks start on Monday
    elif granularity == "month":
        day = day.replace(day=1)
    return day.isoformat()


def labels(period: Period, granularity: str) -> list[str]:
    """Every bucket label of the period, in order (``time_labels``)."""
    found: list[str] = []
    if granularity == "hour":
        # Hour by hour in UTC, so a day with a DST change has 23 or 25 labels.
        moment = period.start
        while moment < period.end:
            text = label(moment.astimezone(period.zone), "hour")
            if not found or found[-1] != text:
                found.append(text)
            moment += _HOUR
        return found
    day = period.start.astimezone(period.zone).date()
    last = (period.end - timedelta(microseconds=1)).astimezone(period.zone).date()
    while day <= last:
        text = label(datetime(day.year, day.month, day.day), granularity)
        if not found or found[-1] != text:
            found.append(text)
        day += timedelta(days=1)
    return found


def offsets(zone: ZoneInfo, start: datetime, end: datetime) -> list[tuple[int, int]]:
    """The zone's UTC offset over ``[start, end)`` in milliseconds, as ``[(until_ms, offset_ms),
    ...]``: each offset holds before the epoch millisecond ``until_ms``, the last one to the end.
    Found a day at a time, then to the second where it changes (zones change on whole seconds)."""

    def offset_at(second: int) -> int:
        delta = datetime.fromtimestamp(second, zone).utcoffset() or timedelta(0)
        return int(delta / timedelta(milliseconds=1))

    first, last = int(start.timestamp()), int(end.timestamp()) + 1
    segments: list[tuple[int, int]] = []
    moment, current = first, offset_at(first)
    while moment < last:
        following = min(moment + 86_400, last)
        if offset_at(following) == current:
            moment = following
            continue
        low, high = moment, following  # offset_at(low) == current != offset_at(high)
        while high - low > 1:
            middle = (low + high) // 2
            if offset_at(middle) == current:
                low = middle
            else:
                high = middle
        segments.append((high * 1000, current))
        moment, current = high, offset_at(high)
    segments.append((last * 1000, current))
    return segments


def local_ms(epoch_ms: int, segments: list[tuple[int, int]]) -> int:
    """``epoch_ms`` shifted by the zone's offset at that moment (``offsets``)."""
    for until, offset in segments:
        if epoch_ms < until:
            return epoch_ms + offset
    return epoch_ms + segments[-1][1]


def _epoch_ms(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(milliseconds=1))


def iso(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).isoformat()
