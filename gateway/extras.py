"""The optional parts of the gateway and the package extras that bring them.

A plain ``pip install gateway`` serves calls (the embedded model included); what a deployment turns on by a setting
comes with an extra: ``postgres`` (``STORE_URL=postgresql://...``), ``redis`` (``REDIS_URL``), ``otel``
(``OTEL_EXPORTER_OTLP_ENDPOINT``), ``plots`` (the replay and bench PNGs); ``all`` is every one. Each library is
imported only where its setting is used, through :func:`require`: when it is configured but not installed, the
error is one line naming the setting and the extra to install, never an ``ImportError`` traceback from deep inside.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Mapping
from urllib.parse import urlsplit

from gateway.config import ConfigError

if TYPE_CHECKING:
    from gateway.config import Settings

# extra -> the modules it provides (the first one is returned by require())
EXTRAS: dict[str, tuple[str, ...]] = {
    "postgres": ("psycopg", "psycopg_pool"),
    "redis": ("redis",),
    "otel": ("opentelemetry.trace", "opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http"),
    "plots": ("matplotlib",),
}


class MissingExtra(ConfigError, ImportError):
    """A setting needs a package extra that is not installed; ``str()`` is the whole story, on one line. A
    :class:`ConfigError` (``gateway serve`` prints it and exits 2) and an ``ImportError`` (what a caller that
    tolerates a missing optional library already catches)."""

    def __init__(self, extra: str, setting: str) -> None:
        super().__init__(f"{setting} needs the {extra} extra: pip install 'gateway[{extra}]'")
        self.extra = extra
        self.setting = setting


def require(extra: str, setting: str) -> ModuleType:
    """Import the modules of ``extra`` (the first one is returned), or raise :class:`MissingExtra` naming
    ``setting`` (what the user configured, e.g. ``"STORE_URL=postgresql://..."``)."""
    modules = [_import(name, extra, setting) for name in EXTRAS[extra]]
    return modules[0]


def _import(name: str, extra: str, setting: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise MissingExtra(extra, setting) from error


def missing_extra(settings: Settings, env: Mapping[str, str]) -> str | None:
    """The one-line problem when a setting of ``settings`` / ``env`` needs an extra that is not installed (``gateway
    serve`` checks before it starts); None when every configured part is installed."""
    store_scheme = urlsplit(settings.store_url).scheme if settings.store_url else ""
    wanted = []
    if store_scheme in ("postgresql", "postgres"):
        wanted.append(("postgres", f"STORE_URL={store_scheme}://..."))
    if settings.redis_url:
        wanted.append(("redis", "REDIS_URL"))
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        if env.get(name):
            wanted.append(("otel", name))
            break
    for extra, setting in wanted:
        try:
            require(extra, setting)
        except MissingExtra as error:
            return str(error)
    return None
