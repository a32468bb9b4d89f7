"""Where a request's API key comes from: the body's ``api_key`` (Rybbit's original place) or an
``Authorization: Bearer`` header (newer Rybbit and its clients). A request may carry both only
if they name the same key."""

from __future__ import annotations

from typing import Any

from flask import request

from .errors import ApiError


def bearer_key() -> str | None:
    """The token of the request's ``Authorization: Bearer`` header, or None without one.
    (The scheme is case-insensitive, as HTTP defines it; other schemes are ignored.)"""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def with_bearer_key(body: dict[str, Any], bearer: str | None) -> dict[str, Any]:
    """The body to validate: with the Bearer key as its ``api_key`` when it names none."""
    if bearer is None or "api_key" in body:
        return body
    return {**body, "api_key": bearer}


def check_agreement(payload: dict[str, Any], bearer: str | None) -> None:
    """403 when the body's key and the Bearer key differ: which one to believe is unknown."""
    if bearer is not None and payload["api_key"] != bearer:
        raise ApiError(403, "Invalid API key")
