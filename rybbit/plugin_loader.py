"""Finding, loading and guarding plugins; building the enrichment chain from them.

Built-in enrichers are ordinary plugins listed in ``BUILTIN_PLUGINS``; third-party ones arrive
through the ``rybbit.plugins`` entry-point group. pluggy does not isolate plugins, so each load
and each registration call is guarded here: a broken plugin is logged and left out, and start-up
goes on.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points, version
from typing import Any

import pluggy
from flask import Flask

from . import hookspecs
from .enrichment import Enricher, EnrichmentRunner

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rybbit.plugins"
RUNNER_KEY = "rybbit.enrichment"
REPORT_KEY = "rybbit.plugins"

# The built-in enrichers, each an ordinary plugin module; the order here does not matter.
BUILTIN_PLUGINS = (
    "plugins.geo",
    "plugins.device",
    "plugins.screen",
    "plugins.url_params",
    "plugins.channel",
    "plugins.bots",
    "plugins.identity",
    "plugins.aliases",
    "plugins.sessions",
)


@dataclass
class PluginReport:
    """What ``GET /api/admin/plugins`` says about one plugin."""

    name: str
    version: str
    source: str  # "builtin" or "entry point <module>"
    enabled: bool
    hooks: list[str] = field(default_factory=list)
    enrichers: list[str] = field(default_factory=list)
    error: str | None = None
    plugin: Any = None

    def as_dict(self, enrichers: dict[str, Enricher]) -> dict[str, Any]:
        statuses = {name: enrichers[name].status() for name in self.enrichers if name in enrichers}
        problems = [f"{name}: {text}" for name, text in statuses.items() if text]
        healthy = self.enabled and self.error is None and not problems
        if self.error:
            status = self.error
        elif not self.enabled:
            status = "disabled by configuration"
        else:
            status = "; ".join(problems) or "ok"
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "hooks": self.hooks,
            "enrichers": self.enrichers,
            "enabled": self.enabled,
            "healthy": healthy,
            "status": status,
        }


def _builtin_plugins() -> list[PluginReport]:
    reports = []
    own_version = version("rybbit-track")
    for module_name in BUILTIN_PLUGINS:
        name = module_name.rsplit(".", 1)[-1]
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            log.exception("built-in plugin %s failed to import", name)
            reports.append(PluginReport(name, own_version, "builtin", False, error=_describe(exc)))
            continue
        reports.append(PluginReport(name, own_version, "builtin", True, plugin=module))
    return reports


def _entry_point_plugins(allowed: list[str] | None) -> list[PluginReport]:
    reports = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if allowed is not None and entry.name not in allowed:
            continue
        dist_version = entry.dist.version if entry.dist else "unknown"
        source = f"entry point {entry.value}"
        try:
            plugin = entry.load()
        except Exception as exc:
            log.error(
                "plugin %s failed to load (%s); starting without it", entry.name, _describe(exc)
            )
            reports.append(
                PluginReport(entry.name, dist_version, source, False, error=_describe(exc))
            )
            continue
        reports.append(PluginReport(entry.name, dist_version, source, True, plugin=plugin))
    return reports


def _describe(exc: BaseException) -> str:
    return f"failed to load: {type(exc).__name__}: {exc}"


def load_plugins(app: Flask) -> tuple[EnrichmentRunner, list[PluginReport]]:
    """Load built-in and installed plugins, collect their enrichers, order them."""
    config = app.config
    disabled = set(config["PLUGINS_DISABLED"])
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)

    reports = _builtin_plugins() + _entry_point_plugins(config["LOAD_PLUGINS"])
    enrichers: list[Enricher] = []
    for report in reports:
        if report.plugin is None:
            continue
        try:
            manager.register(report.plugin, name=report.name)
        except Exception as exc:  # duplicate name, or hooks that match no specification
            log.error("plugin %s could not be registered: %s", report.name, exc)
            report.enabled, report.error = False, f"failed to register: {exc}"
            continue
        callers = manager.get_hookcallers(report.plugin) or []
        unknown = sorted(c.name for c in callers if c.spec is None)
        if unknown:  # most likely a misspelt hook that would otherwise never be called
            manager.unregister(report.plugin)
            log.error("plugin %s implements unknown hooks %s; left out", report.name, unknown)
            report.enabled, report.error = False, f"failed to register: unknown hooks {unknown}"
            continue
        report.hooks = sorted(c.name for c in callers)
        if report.name in disabled:
            report.enabled = False
            continue
        settings = config["PLUGIN_SETTINGS"].get(report.name, {})
        enrichers.extend(_collect(manager, report, settings, app))
    runner = EnrichmentRunner(enrichers)
    log.info("enrichers, in order: %s", ", ".join(e.name for e in runner.enrichers) or "none")
    return runner, reports


def _collect(
    manager: pluggy.PluginManager, report: PluginReport, settings: dict[str, Any], app: Flask
) -> list[Enricher]:
    """Call one plugin's ``register_enrichers`` alone, so its failure touches no other plugin."""
    found: list[Enricher] = []

    def register(enricher: Enricher) -> None:
        if not isinstance(enricher, Enricher) or not enricher.name:
            raise TypeError("register() takes an Enricher instance with a name")
        found.append(enricher)

    for impl in manager.hook.register_enrichers.get_hookimpls():
        if impl.plugin is not report.plugin:
            continue
        arguments = {"register": register, "settings": settings, "app": app}
        try:
            impl.function(**{name: arguments[name] for name in impl.argnames})
        except Exception as exc:
            log.exception("plugin %s failed to register its enrichers; left out", report.name)
            report.error = f"register_enrichers failed: {type(exc).__name__}: {exc}"
            return []
    report.enrichers = [e.name for e in found]
    return found


def init_app(app: Flask) -> None:
    runner, reports = load_plugins(app)
    app.extensions[RUNNER_KEY] = runner
    app.extensions[REPORT_KEY] = reports


def plugin_reports(app: Flask) -> list[dict[str, Any]]:
    runner: EnrichmentRunner = app.extensions[RUNNER_KEY]
    by_name = {e.name: e for e in runner.enrichers}
    return [report.as_dict(by_name) for report in app.extensions[REPORT_KEY]]
