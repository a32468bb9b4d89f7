"""What log lines look like: one JSON object per line, or plain text in a terminal.

Every line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``pid`` and ``message``; fields
given with ``extra=`` (the request line's ``method``, ``status``, ...) sit beside them, and a
traceback goes in ``exc_info``. Lines are JSON unless stderr is a terminal;
``RYBBIT_LOG_FORMAT=json`` or ``text`` overrides that guess. Whatever the source of a line,
anything shaped like an API key is cut to the prefix the admin API shows, and unless
``RYBBIT_LOG_CLIENT_DATA`` is on, no client address or request content gets in through
gunicorn's own warnings or a traceback (ClientDataFilter).

gunicorn.conf.py loads this file on its own, outside the ``rybbit`` package, so that gunicorn's
lines look the same without importing the app into the master (new workers would then keep the
old code after a reload). So it imports only the standard library, orjson and
python-json-logger.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from pythonjsonlogger.core import RESERVED_ATTRS

FORMAT_ENV = "RYBBIT_LOG_FORMAT"
FORMATS = ("json", "text")
# Set to 1 (true, yes) to let client addresses and request content into gunicorn's warnings
# and into tracebacks; off by default (see ClientDataFilter).
CLIENT_DATA_ENV = "RYBBIT_LOG_CLIENT_DATA"

# An API key (rybbit.keys.KEY_FORMAT) keeps its first 11 characters, its prefix.
_API_KEY = re.compile(r"(rb_[0-9a-f]{8})[0-9a-f]{24}")
# LogRecord attributes; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(RESERVED_ATTRS) | {"taskName", "message", "asctime"}


def redact(text: str) -> str:
    """``text`` with every API key in it replaced by its prefix and ``...``."""
    return _API_KEY.sub(r"\1...", text) if "rb_" in text else text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, pid, message, then any extra fields,
    then ``exc_info``/``stack_info`` when there are any. Written by hand rather than with
    python-json-logger's formatter, which took ~100 us a line on the request path (the
    request log writes one per request); values JSON cannot hold are written as ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRS and name[0] != "_":
                fields[name] = value
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            fields["exc_info"] = record.exc_text
        if record.stack_info:
            fields["stack_info"] = self.formatStack(record.stack_info)
        return redact(orjson.dumps(fields, default=str).decode())

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """For people: ``[time] [pid] [LEVEL] logger: message key=value ...`` (extra fields last)."""

    def __init__(self) -> None:
        super().__init__("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [
            f"{name}={_text_value(value)}"
            for name, value in record.__dict__.items()
            if name not in _STANDARD_ATTRS and not name.startswith("_")
        ]
        if extras:
            head, newline, rest = text.partition("\n")  # keep a traceback below the line
            text = f"{head} {' '.join(extras)}{newline}{rest}"
        return redact(text)


# gunicorn's "Invalid request from ip=1.2.3.4: Invalid Request Line 'GET /?user=...'".
_INVALID_REQUEST = re.compile(r"Invalid request from ip=\S*: ")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_QUERY = re.compile(r"\?\S*")


def _withhold(text: str) -> str:
    """A gunicorn line without what the client sent: quoted request text and query strings."""
    return _QUERY.sub("?...", _QUOTED.sub("'...'", text))


class ClientDataFilter(logging.Filter):
    """Keeps client addresses and event content out of lines not written by the app's request
    log (which has its own rules, see rybbit.request_log):

    - gunicorn's ``Invalid request from ip=...: <what was wrong, quoting the request>`` loses
      the address and the quoted request text; ``Error handling request <method> <uri>``
      loses the query string;
    - a traceback keeps its frames but not the exceptions' messages, which can quote what
      the client sent (a store's write error quotes the whole document).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("gunicorn") and record.levelno >= logging.WARNING:
            message = record.getMessage()
            if _INVALID_REQUEST.match(message):
                message = "Invalid request from ip=(withheld): " + _withhold(
                    _INVALID_REQUEST.sub("", message, count=1)
                )
            elif message.startswith("Error handling request"):
                message = _withhold(message)
            record.msg, record.args = message, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = traceback_without_messages(record.exc_info[1])
            record.exc_info = None
        return True


def traceback_without_messages(error: BaseException) -> str:
    """The traceback of ``error`` and the exceptions it chains, each exception named by its
    type only."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    parts: list[str] = []
    for number, each in enumerate(reversed(chain)):
        if number:
            parts.append("\nThe above exception led to the following one:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(each.__traceback__))
        kind = type(each)
        parts.append(
            f"{kind.__module__}.{kind.__qualname__} "
            f"(message withheld; {CLIENT_DATA_ENV}=1 logs it)\n"
        )
    return "".join(parts).rstrip("\n")


def client_data_logged() -> bool:
    return os.environ.get(CLIENT_DATA_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() for c in text) else text


def chosen_format(stream: IO[str] | None = None) -> str:
    """``RYBBIT_LOG_FORMAT`` if set, else "text" when ``stream`` (stderr) is a terminal and
    "json" otherwise. A value other than json or text fails start-up."""
    value = os.environ.get(FORMAT_ENV, "").strip().lower()
    if value in FORMATS:
        return value
    if value:
        raise ValueError(f"{FORMAT_ENV} must be one of {', '.join(FORMATS)}, not {value!r}")
    stream = stream if stream is not None else sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no stream, or a closed one
        return "json"


def dict_config(log_format: str | None = None) -> dict[str, Any]:
    """``logging.config.dictConfig`` settings: every logger's lines at INFO and above, on
    stderr, in ``log_format`` (default: :func:`chosen_format`)."""
    formatter = JsonFormatter if (log_format or chosen_format()) == "json" else TextFormatter
    handler: dict[str, Any] = {
        "class": "logging.StreamHandler",
        "formatter": "rybbit",
        "stream": "ext://sys.stderr",
    }
    if not client_data_logged():
        handler["filters"] = ["client_data"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"rybbit": {"()": formatter}},
        "filters": {"client_data": {"()": ClientDataFilter}},
        "handlers": {"stderr": handler},
        "root": {"level": "INFO", "handlers": ["stderr"]},
    }


def configure_logging() -> None:
    """Log as :func:`dict_config` says, unless logging is set up already: by gunicorn from
    gunicorn.conf.py (the same settings), by an application embedding this one, by pytest."""
    if logging.getLogger().handlers:
        return
    logging.config.dictConfig(dict_config())
    logging.captureWarnings(True)  # warnings become log lines too, not stray text on stderr
