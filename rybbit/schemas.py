"""Marshmallow schemas for the tracking payload, with Rybbit's (zod's) rules and messages.

Rybbit validates ``/api/track`` with a strict zod schema; its error messages are part of what
clients see, so the fields here raise the same texts ("Required", "Expected string, received
number", "String must contain at most 512 character(s)", ...).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import ada_url
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validates_schema,
)

from .errors import InvalidPayload

EVENT_TYPES = (
    "pageview",
    "custom_event",
    "performance",
    "outbound",
    "error",
    # Sent by Rybbit's browser SDK when the site's tracking config turns them on.
    "button_click",
    "copy",
    "form_submit",
    "input_change",
)
# The browser SDK's interaction events whose properties are required (button_click's are not).
_INTERACTION_RULES = ("copy", "form_submit", "input_change")
PERFORMANCE_FIELDS = ("lcp", "cls", "inp", "fcp", "ttfb")
PROPERTIES_MAX = 2048
ERROR_PROPERTIES_MAX = 4096
# Rybbit stores screen sizes as UInt16; larger values are not screens.
SCREEN_MAX = 65535
# Deeper properties documents are refused: MongoDB caps nesting at 100 levels.
PROPERTIES_MAX_DEPTH = 32
_INT64 = 2**63
CLIENT_TIME_MAX_AGE = timedelta(hours=72)
NUMERIC_SITE_ID = re.compile(r"[0-9]+")
# JavaScript's String.prototype.trim() removes these (WhiteSpace and LineTerminator); Python's
# str.strip() differs (it keeps U+FEFF and strips U+001C-U+001F).
_JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
DISCRIMINATOR_MESSAGE = "Invalid discriminator value. Expected " + " | ".join(
    f"'{t}'" for t in EVENT_TYPES
)


def js_type(value: Any) -> str:
    """The JavaScript type name zod reports for a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def js_length(text: str) -> int:
    """JavaScript's ``.length``, which zod's limits count: UTF-16 units (an emoji is two)."""
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) // 2


def js_truthy(value: Any) -> bool:
    """JavaScript's truthiness of a JSON value (Rybbit checks some properties only if truthy)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float | str):
        return bool(value)  # 0, -0.0 and "" are falsy; JSON has no NaN
    return True  # objects and arrays, even empty ones


def js_trim(text: str) -> str:
    return text.strip(_JS_WHITESPACE)


def too_long(limit: int) -> str:
    return f"String must contain at most {limit} character(s)"


class _ZodField(fields.Field):
    """A field whose missing/null/type errors read as zod's."""

    expected = "unknown"
    default_error_messages = {
        "required": "Required",
        "null": "Expected {expected}, received null",
        "invalid": "Expected {expected}, received {received}",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error_messages["null"] = self.error_messages["null"].format(expected=self.expected)

    def wrong_type(self, value: Any) -> ValidationError:
        return self.make_error("invalid", expected=self.expected, received=js_type(value))


class ZString(_ZodField):
    """A JSON string with optional length bounds (counted in characters)."""

    expected = "string"

    def __init__(
        self, *, min_length: int | None = None, max_length: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.min_length = min_length
        self.max_length = max_length

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise self.wrong_type(value)
        length = len(value)
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationError("Invalid string: unpaired surrogate") from None
            length = js_length(value)
        if self.max_length is not None and length > self.max_length:
            raise ValidationError(too_long(self.max_length))
        if self.min_length is not None and length < self.min_length:
            raise ValidationError(f"String must contain at least {self.min_length} character(s)")
        return value


class SiteId(ZString):
    """A site id: a string, or a JSON integer that typed clients send for numeric ids. Digits
    name the site of that number, as in Rybbit ("01" is site 1)."""

    expected = "string"

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        text = super()._deserialize(value, attr, data, **kwargs)
        return str(int(text)) if NUMERIC_SITE_ID.fullmatch(text) else text


class IpAddress(ZString):
    """An IPv4 or IPv6 address, stored in its canonical text form."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise ValidationError("Invalid ip") from None


class ZNumber(_ZodField):
    """A finite JSON number, optionally an integer, with bounds as zod words them."""

    expected = "number"

    def __init__(
        self,
        *,
        integer: bool = False,
        positive: bool = False,
        minimum: float | None = None,
        maximum: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.integer = integer
        self.positive = positive
        self.minimum = minimum
        self.maximum = maximum

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> float | int | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.wrong_type(value)
        try:
            as_float = float(value)
        except OverflowError:
            as_float = math.inf if value > 0 else -math.inf  # what JavaScript reads it as
        # zod runs every check of the chain and reports each failure, in the chain's order.
        errors = []
        if self.integer and not as_float.is_integer():  # inf is not an integer either
            errors.append("Expected integer, received float")
        if self.positive and not as_float > 0:
            errors.append("Number must be greater than 0")
        if self.minimum is not None and not as_float >= self.minimum:
            errors.append(f"Number must be greater than or equal to {self.minimum}")
        if errors:
            raise ValidationError(errors)
        if not math.isfinite(as_float):
            # zod accepts Infinity (1e400 in JSON), and Rybbit stores it as JSON null.
            if not self.allow_none:
                raise ValidationError("Number must be finite")
            return None
        if self.integer:
            value = int(value)
        elif isinstance(value, int) and not -_INT64 <= value < _INT64:
            value = as_float  # BSON integers are 64-bit; keep the magnitude as a double
        # Our own bound (not zod's): checked only once zod's checks pass.
        if self.maximum is not None and value > self.maximum:
            raise ValidationError(f"Number must be less than or equal to {self.maximum}")
        return value


class ClientTime(_ZodField):
    """When the event happened, by the client's clock: ISO 8601 text (UTC unless it carries an
    offset) or epoch milliseconds. At most ``CLIENT_TIME_MAX_AGE`` old."""

    expected = "string or number"

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        try:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise self.wrong_type(value)
            if isinstance(value, str):
                moment = datetime.fromisoformat(value)
                moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            else:
                moment = datetime.fromtimestamp(value / 1000, UTC)
            # Inside the try: an offset can carry a time just past year 9999 or before year 1.
            moment = moment.astimezone(UTC)
        except (ValueError, OverflowError, OSError):
            raise ValidationError("Invalid timestamp: use ISO 8601 or epoch milliseconds") from None
        if moment < datetime.now(UTC) - CLIENT_TIME_MAX_AGE:
            raise ValidationError("Timestamp must not be more than 72 hours in the past")
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class ParsedJSON(NamedTuple):
    raw_length: int
    value: Any


# The value of a ``properties`` string that is not JSON at all: each event type decides what
# that means (pageviews drop such properties, as Rybbit does; custom events are refused).
NOT_JSON = object()


def safe_key(key: str) -> str:
    """A document key MongoDB will not read as an operator or a path: its documented advice is
    to store '$' and '.' as their full-width forms. NUL characters are dropped."""
    if key.startswith("$"):
        key = "\uff04" + key[1:]
    if "." in key:
        key = key.replace(".", "\uff0e")
    return key.replace("\x00", "")


def _check_text(text: str) -> str:
    if not text.isascii():
        text.encode("utf-8")  # UnicodeEncodeError (a ValueError) for unpaired surrogates
    return text


def check_json_value(value: Any, depth: int = 0) -> Any:
    """Refuse what BSON or JSON output cannot hold (unpaired surrogates, non-finite numbers,
    deep nesting); escape keys MongoDB would read as operators or paths."""
    if depth > PROPERTIES_MAX_DEPTH:
        raise ValueError(f"nested deeper than {PROPERTIES_MAX_DEPTH} levels")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if "\x00" in key:
                raise ValueError("keys must not contain NUL characters")
            out[safe_key(_check_text(key))] = check_json_value(item, depth + 1)
        return out
    if isinstance(value, list):
        items = [check_json_value(item, depth + 1) for item in value]  # too deep: said first
        if any(isinstance(item, list) for item in items):
            raise UnsupportedShape("Arrays directly inside arrays are not supported")
        return items
    if isinstance(value, str):
        return _check_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")  # 1e999 parses as inf
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        try:
            return float(value)
        except OverflowError:  # 10**309 and beyond: as infinite as 1e999
            raise ValueError("numbers must be finite") from None
    return value


class UnsupportedShape(ValueError):
    """Valid JSON that a supported store cannot hold. Nested arrays: FerretDB refuses them,
    and the contract is the same on every store, so they are refused on all of them."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` without NaN/Infinity, and refusing duplicate keys: its decoder made once,
    not per call, and the same decoding of bytes (UTF-8, -16 or -32, detected as it does)."""
    if isinstance(text, str):
        if text.startswith("\ufeff"):  # json.loads' own error for it
            return json.loads(text)
    else:
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    return _STRICT_DECODER.decode(text)


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


_STRICT_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, object_pairs_hook=_unique_object
)


class JSONString(ZString):
    """A string holding JSON; deserialises to the parsed value (``NOT_JSON`` if it does not
    parse) and the raw length. JSON that parses but cannot be stored is refused here."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> ParsedJSON:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            parsed = loads_strict(text)
        except (ValueError, RecursionError):
            return ParsedJSON(js_length(text), NOT_JSON)
        try:
            return ParsedJSON(js_length(text), check_json_value(parsed))
        except UnsupportedShape as exc:
            raise ValidationError(str(exc)) from None
        except (ValueError, RecursionError):
            raise ValidationError("Properties must be a valid JSON string") from None


class TrackEventSchema(Schema):
    """The ``/api/track`` body. Unknown keys are refused, as Rybbit's ``.strict()`` does."""

    class Meta:
        unknown = RAISE

    api_key = ZString(required=True)
    site_id = SiteId(required=True, min_length=1, max_length=255)
    type = ZString(load_default="pageview")
    pathname = ZString(max_length=2048)
    hostname = ZString(max_length=253)
    page_title = ZString(max_length=512)
    referrer = ZString(max_length=2048)
    user_id = ZString(max_length=255)
    user_agent = ZString(max_length=512)
    ip_address = IpAddress()
    querystring = ZString(max_length=2048)
    language = ZString(max_length=35)
    screenWidth = ZNumber(integer=True, positive=True, maximum=SCREEN_MAX)
    screenHeight = ZNumber(integer=True, positive=True, maximum=SCREEN_MAX)
    event_name = ZString(max_length=256)
    properties = JSONString(max_length=ERROR_PROPERTIES_MAX)
    lcp = ZNumber(minimum=0, allow_none=True)
    cls = ZNumber(minimum=0, allow_none=True)
    inp = ZNumber(minimum=0, allow_none=True)
    fcp = ZNumber(minimum=0, allow_none=True)
    ttfb = ZNumber(minimum=0, allow_none=True)
    # Extensions to Rybbit's payload: client-side idempotency and event time.
    event_id = ZString(min_length=1, max_length=64)
    timestamp = ClientTime()

    @pre_load
    def _check_discriminator(self, data: Any, **kwargs: Any) -> Any:
        """An unknown ``type`` is the only error reported, as zod's discriminated union does."""
        if isinstance(data, dict) and "type" in data and data["type"] not in EVENT_TYPES:
            raise ValidationError(DISCRIMINATOR_MESSAGE, "type")
        return data

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _check_type_rules(
        self, data: dict[str, Any], original: dict[str, Any], **kwargs: Any
    ) -> None:
        event_type = data.get("type")
        if event_type is None:
            return  # the field itself failed and says why
        errors = _type_rule_errors(event_type, data, original)
        if errors:
            raise ValidationError(errors)

    @post_load
    def _as_rybbit_stores_it(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Properties as their parsed value, dropped when they are not JSON (only pageview and
        performance events get here with such properties); ``user_id`` trimmed as Rybbit does,
        and dropped when nothing is left (all-blank ids would otherwise be one visitor)."""
        if "properties" in data:
            if data["properties"].value is NOT_JSON:
                del data["properties"]
            else:
                data["properties"] = data["properties"].value
        if "user_id" in data:
            data["user_id"] = js_trim(data["user_id"])
            if not data["user_id"]:
                del data["user_id"]
        return data


class BrowserTrackEventSchema(TrackEventSchema):
    """``/api/track`` as browsers use it too: without a key the event is keyless, and must
    come from an allowed origin (rybbit.browser). The batch endpoint keeps the key required."""

    api_key = ZString()


def _type_rule_errors(
    event_type: str, data: dict[str, Any], original: dict[str, Any]
) -> dict[str, list[str]]:
    """Per-type rules of Rybbit's discriminated union, as ``{field or _schema: [messages]}``.

    ``data`` holds the fields that passed their own checks; ``original`` tells a missing field
    (reported here) from an invalid one (already reported by its field).
    """
    errors: dict[str, list[str]] = {}
    props: ParsedJSON | None = data.get("properties")

    def add(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    if event_type != "performance":
        stray = [name for name in PERFORMANCE_FIELDS if name in data]
        if stray:
            add("_schema", "Unrecognized key(s) in object: " + ", ".join(f"'{k}'" for k in stray))
    limit = ERROR_PROPERTIES_MAX if event_type == "error" else PROPERTIES_MAX
    if props is not None and props.raw_length > limit:
        add("properties", too_long(limit))

    if event_type in ("custom_event", "error") and data.get("event_name") == "":
        add("event_name", "String must contain at least 1 character(s)")
    if event_type in ("custom_event", "error") and "event_name" not in original:
        add("event_name", "Required")
        if event_type == "custom_event":
            add("_schema", "Custom events require event_name")

    if event_type in ("outbound", "error", *_INTERACTION_RULES) and "properties" not in original:
        add("properties", "Required")
    elif props is None:
        pass  # invalid, and its field said why
    elif event_type == "custom_event":
        if props.value is NOT_JSON:
            add("properties", "Properties must be a valid JSON string")
    elif event_type == "button_click":
        if props.value is NOT_JSON:
            add("properties", "Properties must be valid JSON")
    elif event_type in _INTERACTION_RULES:
        if not _INTERACTION_CHECKS[event_type](props.value):
            add("properties", _INTERACTION_MESSAGES[event_type])
    elif event_type == "outbound":
        if not _is_outbound(props.value):
            add(
                "properties",
                "Properties must be valid JSON with outbound link fields "
                "(url required, text and target optional)",
            )
    elif event_type == "error":
        if not _is_error(props.value):
            add(
                "properties",
                "Properties must be valid JSON with error fields "
                "(message, stack, fileName, lineNumber, columnNumber)",
            )
    return errors


def _is_outbound(value: Any) -> bool:
    """Rybbit's outbound rule: a non-empty ``url`` that the WHATWG URL parser (the one behind
    JavaScript's ``new URL``) accepts; ``text`` and ``target`` are checked only if truthy."""
    if not isinstance(value, dict):
        return False
    url = value.get("url")
    if not isinstance(url, str) or not url or not ada_url.check_url(url):
        return False
    return _truthy_ones_are(value, ("text", "target"), str)


def _is_error(value: Any) -> bool:
    """Rybbit's error rule: ``message`` a string; the others checked only if truthy."""
    if not isinstance(value, dict) or not isinstance(value.get("message"), str):
        return False
    return _truthy_ones_are(value, ("stack", "fileName"), str) and _truthy_ones_are(
        value, ("lineNumber", "columnNumber"), int | float
    )


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_count(value: Any) -> bool:
    """A JSON number that is not negative (JavaScript's ``typeof n == "number" && n >= 0``)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _has(value: Any, required: dict[str, Any], optional: dict[str, Any] | None = None) -> bool:
    """Rybbit's interaction-event rules: an object whose required fields pass their checks,
    and whose optional fields pass them when present."""
    if not isinstance(value, dict):
        return False
    if not all(name in value and check(value[name]) for name, check in required.items()):
        return False
    return all(name not in value or check(value[name]) for name, check in (optional or {}).items())


_INTERACTION_CHECKS = {
    "copy": lambda v: _has(
        v, {"sourceElement": _is_str}, {"text": _is_str, "textLength": _is_count}
    ),
    "form_submit": lambda v: _has(
        v,
        {
            "formId": _is_str,
            "formName": _is_str,
            "formAction": _is_str,
            "method": _is_str,
            "fieldCount": _is_count,
        },
    ),
    "input_change": lambda v: _has(v, {"element": _is_str, "inputName": _is_str}),
}
_INTERACTION_MESSAGES = {
    "copy": "Properties must be valid JSON with copy fields "
    "(sourceElement required, text and textLength optional)",
    "form_submit": "Properties must be valid JSON with form_submit fields "
    "(formId, formName, formAction, method, fieldCount required)",
    "input_change": "Properties must be valid JSON with input_change fields "
    "(element, inputName required)",
}


def _truthy_ones_are(value: dict[str, Any], names: tuple[str, ...], kind: Any) -> bool:
    return all(
        not js_truthy(value.get(name))
        or (isinstance(value[name], kind) and not isinstance(value[name], bool))
        for name in names
    )


def validation_error_to_invalid_payload(
    schema: Schema, exc: ValidationError, body: dict[str, Any]
) -> InvalidPayload:
    """Turn Marshmallow's error dict into zod's flattened ``fieldErrors``/``formErrors``.

    Nested errors are keyed by their dotted path (``settings.excluded_ips.0``).
    """
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    if messages == {"type": [DISCRIMINATOR_MESSAGE]}:
        return InvalidPayload({"type": [DISCRIMINATOR_MESSAGE]}, [])  # zod stops right there
    known = {f.data_key or name for name, f in schema.fields.items()}
    field_errors: dict[str, list[str]] = {}
    form_errors: list[str] = list(messages.get("_schema", []))
    for key, value in messages.items():
        if key in known:
            _flatten(str(key), value, field_errors)
    unknown = [key for key in body if key not in known]  # in the client's order, as zod does
    if unknown:
        listed = ", ".join(f"'{k}'" for k in unknown)
        form_errors.insert(0, f"Unrecognized key(s) in object: {listed}")
    return InvalidPayload(field_errors, form_errors)


def _flatten(path: str, value: Any, out: dict[str, list[str]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            name = path if key == "_schema" else f"{path}.{key}"
            _flatten(name, ["Unrecognized key"] if item == ["Unknown field."] else item, out)
    else:
        out.setdefault(path, []).extend(value)
