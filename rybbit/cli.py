"""``flask --app app sites|keys|events|geoip ...``: set-up and export without the admin API."""

from __future__ import annotations

import json
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from . import delivery, geoip_update, keys, sites
from .events import export_lines
from .jsonutil import json_default
from .storage import get_store

sites_cli = AppGroup("sites", help="Manage sites.")
keys_cli = AppGroup("keys", help="Manage API keys.")
events_cli = AppGroup("events", help="Read stored events.")
retention_cli = AppGroup("retention", help="Event retention.")
geoip_cli = AppGroup("geoip", help="Manage the MaxMind City database of the geo enricher.")


def _echo_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, default=json_default))


@sites_cli.command("create")
@click.option("--name", required=True, help="Display name.")
@click.option("--domain", required=True, help="The site's domain, e.g. example.com.")
def create_site_command(name: str, domain: str) -> None:
    """Create a site and print it as JSON."""
    _echo_json(sites.create_site(get_store(), name=name, domain=domain))


@keys_cli.command("create")
@click.argument("site_id")
@click.option("--name", default=None, help="A label for the key.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(keys.SCOPES),
    help="What the key may do; repeat for both (default: ingest).",
)
def create_key_command(site_id: str, name: str | None, scopes: tuple[str, ...]) -> None:
    """Create an API key for SITE_ID and print it (the only time it is shown) as JSON."""
    store = get_store()
    if sites.find_site(store, site_id) is None:
        raise click.ClickException(f"site {site_id} not found")
    _echo_json(keys.create_key(store, site_id, name=name, scopes=list(scopes) or None))


@events_cli.command("export")
@click.argument("site_id")
def export_events_command(site_id: str) -> None:
    """Print SITE_ID's stored events as NDJSON, oldest first."""
    delivery.settle(current_app)  # events this process acknowledged (an embedding app's)
    for line in export_lines(get_store(), site_id, newest_first=False):
        click.echo(line)


@geoip_cli.command("update")
@click.option("--url", default=None, help="Download URL (a mirror); default GEOIP_DOWNLOAD_URL.")
@click.option("--account-id", default=None, help="MaxMind account id; default MAXMIND_ACCOUNT_ID.")
@click.option(
    "--license-key",
    default=None,
    help="MaxMind licence key; default MAXMIND_LICENSE_KEY (better: command lines are visible "
    "to other users).",
)
@click.option(
    "--sha256-url", default=None, help='Checksum file URL, or "off"; default GEOIP_SHA256_URL.'
)
def geoip_update_command(
    url: str | None, account_id: str | None, license_key: str | None, sha256_url: str | None
) -> None:
    """Download the City database and swap it in atomically; running workers reload it."""
    settings = geoip_update.settings_from_config(
        current_app, url=url, account_id=account_id, license_key=license_key, sha256_url=sha256_url
    )
    try:
        done = geoip_update.update_database(settings)
    except geoip_update.UpdateError as exc:
        raise click.ClickException(f"GeoIP update failed, database unchanged: {exc}") from None
    checked = "checksum verified" if done.sha256_verified else "no checksum to verify"
    before = f", replacing one built {done.previous_build_date}" if done.previous_build_date else ""
    click.echo(
        f"installed {done.database_type} built {done.build_date} ({done.size} bytes, {checked}) "
        f"at {done.path}{before}"
    )
    seconds = current_app.config["GEOIP_RELOAD_SECONDS"]
    if seconds:
        click.echo(f"running workers reopen it within {seconds} s")


@retention_cli.command("status")
def retention_status_command() -> None:
    """Print the events collection's kind and how old events are removed, as JSON."""
    click.echo(json.dumps(get_store().retention.describe(), default=json_default))


@retention_cli.command("purge")
def retention_purge_command() -> None:
    """Delete events older than EVENT_RETENTION_DAYS now (for cron on quiet instances)."""
    store = get_store()
    retention = store.retention
    if retention.settings.seconds is None:
        raise click.ClickException("EVENT_RETENTION_DAYS is not set: events are kept forever")
    if retention.timeseries:
        click.echo("events is a time-series collection: the server expires old events itself")
        return
    click.echo(json.dumps({"deleted": retention.purge(store)}))


def init_app(app: Flask) -> None:
    for group in (sites_cli, keys_cli, events_cli, geoip_cli, retention_cli):
        app.cli.add_command(group)
