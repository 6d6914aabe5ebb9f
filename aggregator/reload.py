"""Reloading the settings on SIGHUP: what changes live, what needs a restart, and saying which."""

import logging
from collections.abc import Callable

import msgspec

from aggregator.config import ConfigError, Settings
from aggregator.ingest import Ingest
from aggregator.webconfig import WebGuard

log = logging.getLogger(__name__)

# Read once at start: a change to these is refused with a message, the running values stay.
RESTART_ONLY = ("amqp", "http", "state", "source_auth", "shard")


def _differences(old: object, new: object, prefix: str) -> list[str]:
    """Dotted names of the fields that differ between two settings sections."""
    names = getattr(old, "__struct_fields__", ())
    return [f"{prefix}.{name}" for name in names if getattr(old, name) != getattr(new, name)]


class Reloader:
    """Applies a newly loaded configuration to a running aggregator."""

    def __init__(
        self, load: Callable[[], Settings], settings: Settings, ingest: Ingest, web: WebGuard | None = None
    ) -> None:
        self._load = load
        self.settings = settings
        self._ingest = ingest
        self._web = web

    def reload(self) -> list[str]:
        """Load the configuration again and apply what can change live; returns what changed.

        Logs each change, each refused one (with why), and a configuration that does not load at all
        (the running one stays). The web config file is read again too, whatever became of the
        settings. Never raises: a reload cannot stop the aggregator.
        """
        web_changes = self._web.reload() if self._web is not None else []
        try:
            new = self._load()
        except ConfigError as error:
            log.error("reload refused: %s; the running configuration stays", error)
            return web_changes
        old = self.settings
        needs_restart = [
            name
            for section in RESTART_ONLY
            for name in _differences(getattr(old, section), getattr(new, section), section)
        ]
        if old.catalog.namespace != new.catalog.namespace:
            needs_restart.append("catalog.namespace")
        if needs_restart:
            log.warning("reload: %s changed, which takes a restart; the running values stay", ", ".join(needs_restart))
        ingest = self._ingest
        metrics = new.metrics
        try:
            changes = ingest.custom.update(metrics)
        except ValueError as error:
            log.error("reload refused for the custom metrics: %s; they stay as they were", error)
            changes, metrics = [], old.metrics
        catalog = msgspec.structs.replace(new.catalog, namespace=old.catalog.namespace)
        limits = _differences(old.catalog, catalog, "catalog")
        if limits:
            ingest.set_catalog_settings(catalog)
            changes += [f"{name} = {getattr(catalog, name.removeprefix('catalog.'))!r}" for name in limits]
        if new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
            changes.append(f"log_level = {new.log_level!r}")
        self.settings = msgspec.structs.replace(old, catalog=catalog, metrics=metrics, log_level=new.log_level)
        for change in changes:
            log.info("reload: %s", change)
        if not changes and not web_changes and not needs_restart:
            log.info("reload: nothing changed")
        return changes + web_changes
