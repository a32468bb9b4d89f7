"""The hooks a rybbit-track plugin can implement: the public plugin API.

A plugin is a module (or any object) with functions decorated ``@rybbit.plugin.hookimpl`` whose
names and parameters match the specifications below. A plugin may take any subset of the
parameters a hook offers. New hooks and new keyword parameters may be added; existing ones keep
their meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from flask import Flask

    from .enrichment import Enricher

PROJECT = "rybbit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_enrichers(
    register: Callable[[Enricher], None], settings: Mapping[str, Any], app: Flask
) -> None:
    """Register this plugin's enrichers.

    Called once per process at start-up, after configuration is loaded and before any request.
    Call ``register(enricher)`` for each :class:`rybbit.plugin.Enricher` the plugin provides.

    ``settings`` is this plugin's own section of the ``PLUGIN_SETTINGS`` configuration (an empty
    mapping when there is none), keyed by the plugin's name.

    ``app`` is the Flask application, for reading ``app.config`` and ``app.instance_path``.

    Raising here is logged and the plugin's enrichers are left out; start-up goes on.
    """
