"""Every served handler, by syscall number: the one place the areas meet.

Each area module (info, process, signal, ...) exports a ``routes(...)``
function returning ``{number: handler}``; :func:`served_routes` merges them
for the sentry. A number no area serves falls back to the sentry service's
transitional pass-through (sentry/service.py).
"""

from __future__ import annotations

from pysandbox.sentry.loop import Handler

from .info import InfoConfig, InfoHandlers

__all__ = ["served_routes"]


def served_routes(info: InfoConfig) -> dict[int, Handler]:
    """{syscall number: handler} for everything pysandbox serves today."""
    routes: dict[int, Handler] = {}
    routes.update(InfoHandlers(info).routes())
    return routes
