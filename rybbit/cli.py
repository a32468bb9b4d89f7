"""``flask --app app sites|keys|events ...``: set-up and export without the admin API."""

from __future__ import annotations

import json
from typing import Any

import click
from flask import Flask
from flask.cli import AppGroup

from . import keys, sites
from .events import event_to_json, iter_events
from .jsonutil import json_default
from .store import get_store

sites_cli = AppGroup("sites", help="Manage sites.")
keys_cli = AppGroup("keys", help="Manage API keys.")
events_cli = AppGroup("events", help="Read stored events.")


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
def create_key_command(site_id: str, name: str | None) -> None:
    """Create an API key for SITE_ID and print it (the only time it is shown) as JSON."""
    store = get_store()
    if sites.find_site(store, site_id) is None:
        raise click.ClickException(f"site {site_id} not found")
    _echo_json(keys.create_key(store, site_id, name=name))


@events_cli.command("export")
@click.argument("site_id")
def export_events_command(site_id: str) -> None:
    """Print SITE_ID's stored events as NDJSON, oldest first."""
    for event in iter_events(get_store(), site_id, newest_first=False):
        click.echo(event_to_json(event))


def init_app(app: Flask) -> None:
    for group in (sites_cli, keys_cli, events_cli):
        app.cli.add_command(group)
