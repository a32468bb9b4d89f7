"""The fast path answers exactly as the Marshmallow schema does, whenever it answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from bench.workload import events as workload_events
from rybbit.fast_schema import DEFER, fast_load
from rybbit.schemas import EVENT_TYPES, BrowserTrackEventSchema, TrackEventSchema

SCHEMAS = [TrackEventSchema(), BrowserTrackEventSchema()]

# Text around the limits and the awkward cases: non-ASCII (counted in UTF-16 units), emoji,
# unpaired surrogates, JavaScript whitespace (user ids are trimmed), empty strings.
_odd_text = st.sampled_from(
    ["", " ", "\u00a0", "\ufeff", "é", "😀", "\ud800", "a\x00b", "  user  ", "01", "007", "-5"]
)
_text = st.one_of(
    st.text(max_size=12),
    _odd_text,
    st.integers(0, 3).flatmap(lambda n: st.just("x" * (34 + n))),  # language: 35
    st.sampled_from(["x" * 253, "x" * 254, "é" * 256, "😀" * 128, "😀" * 129, "a" * 2049]),
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
_properties = st.one_of(
    _json_values.map(json.dumps),
    st.dictionaries(st.sampled_from(["$a", "a.b", "k", "\x00"]), _json_values).map(json.dumps),
    st.sampled_from(["{", "not json", '{"a": NaN}', '{"a":1,"a":2}', "[[1]]", '{"x":[[1]]}']),
    st.just('{"k": "' + "v" * 2040 + '"}'),
    st.just('{"k": "' + "v" * 2050 + '"}'),
)
_anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _text)

FIELDS: dict[str, Any] = {
    "api_key": st.one_of(st.just("rb_" + "a" * 32), _anything),
    "site_id": st.one_of(
        st.sampled_from(["1", "01", "abc", "", "x" * 255, "x" * 256, 1, 0, -1, 10**300]),
        _anything,
    ),
    "type": st.one_of(st.sampled_from([*EVENT_TYPES, "bogus"]), _anything),
    "pathname": _text,
    "hostname": _text,
    "page_title": _text,
    "referrer": _text,
    "user_id": _text,
    "user_agent": _text,
    "querystring": _text,
    "language": _text,
    "event_name": st.one_of(st.sampled_from(["", "signup"]), _text),
    "ip_address": st.one_of(
        st.sampled_from(
            ["81.2.69.142", "::ffff:1.2.3.4", "2001:DB8::1", "1.2.3", "::1%eth0", "0.0.0.0"]  # noqa: S104
            + ["01.2.3.4", "1.2.3.04", "255.255.255.255", "256.1.1.1", "1.2.3.4 ", "1.2.3.4\n"]
        ),
        _anything,
    ),
    "screenWidth": st.one_of(st.sampled_from([1, 390, 65535, 65536, 0, -1, 390.0, 1.5]), _anything),
    "screenHeight": st.one_of(st.sampled_from([844, True]), _anything),
    "properties": st.one_of(_properties, _anything),
    "event_id": st.one_of(st.sampled_from(["e1", "", "x" * 64, "x" * 65]), _anything),
    "timestamp": st.sampled_from(["2026-01-01T00:00:00Z", 0]),
    "lcp": st.floats(0, 10),
    "unknown_key": st.just(1),
}
_bodies = st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), max_size=len(FIELDS)).flatmap(
    lambda keys: st.fixed_dictionaries({key: FIELDS[key] for key in keys})
)


def marshmallow_load(schema: Any, body: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return schema.load(dict(body))  # type: ignore[no-any-return]
    except ValidationError:
        return None


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: type(s).__name__)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_bodies)
def test_whenever_the_fast_path_answers_marshmallow_answers_the_same(
    schema: Any, body: dict[str, Any]
) -> None:
    fast = fast_load(schema, dict(body))
    if fast is not DEFER:
        assert fast == marshmallow_load(schema, body)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: type(s).__name__)
@settings(max_examples=500, deadline=None)
@given(
    body=st.fixed_dictionaries(
        {
            "api_key": st.just("rb_" + "a" * 32),
            "site_id": st.sampled_from(["1", 7, "01", -1, 10**300, "x" * 256, ""]),
        },
        optional={
            key: FIELDS[key]
            for key in ("pathname", "user_id", "ip_address", "properties", "screenWidth")
        },
    )
)
def test_near_valid_events_agree_too(schema: Any, body: dict[str, Any]) -> None:
    """Mostly valid bodies, so that the fast path's answers (not only its deferrals) are
    compared often."""
    fast = fast_load(schema, dict(body))
    if fast is not DEFER:
        assert fast == marshmallow_load(schema, body)


def test_the_events_clients_send_take_the_fast_path() -> None:
    """The benchmark's realistic mix (pageviews with screens, referrers, query strings) and a
    custom event with properties are all answered without Marshmallow, as it would."""
    schema = BrowserTrackEventSchema()
    bodies = []
    for event in workload_events(300, "1"):
        event["api_key"] = "rb_" + "a" * 32
        if "screen_width" in event:
            event["screenWidth"] = event.pop("screen_width")
            event["screenHeight"] = event.pop("screen_height")
        bodies.append(event)
    bodies.append(
        {
            "api_key": "rb_" + "b" * 32,
            "site_id": 3,
            "type": "custom_event",
            "event_name": "purchase",
            "properties": json.dumps({"amount": 99.99, "currency": "USD", "a.b": [1, {"$x": 2}]}),
            "user_id": "  user-42 ",
            "page_title": "Café ☕ menu",
        }
    )
    for body in bodies:
        fast = fast_load(schema, dict(body))
        assert fast is not DEFER, body
        assert fast == schema.load(dict(body))
