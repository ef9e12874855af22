"""The worker's HTTP surface: where it listens, which of Faust's views it serves, who may ask.

SPEC section 6: bound to the configured host (127.0.0.1 by default) and, when
SEGMENTS_API_TOKEN is set, a bearer token on everything but the health checks.
"""

from __future__ import annotations

import hmac
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

# Kubernetes probes and load balancers carry no token.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def require_bearer_token(token: str) -> Callable[[web.Request, Handler], Awaitable[Any]]:
    """aiohttp middleware: 401 unless `Authorization: Bearer <token>`, except on OPEN_PATHS."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode()
            # Constant time: the comparison must not tell how much of a guess was right.
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {"error": "unauthorized", "message": "missing or wrong bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    return guard


def advertised_host(host: str, advertised: str | None) -> str:
    """The host name other workers use to reach this one: a wildcard bind address
    (0.0.0.0, ::) reaches nobody else, so the machine's host name stands in for it."""
    if advertised:
        return advertised
    return socket.gethostname() if host in WILDCARD_HOSTS else host


def faust_web_settings(
    host: str, port: int, api_token: str | None, advertised: str | None = None
) -> dict[str, Any]:
    """Faust app settings for its web server.

    `web_bind` is the address the server listens on; `web_host` is the name Faust
    advertises to the other workers of the group (its canonical URL): an explain
    request for a customer of another worker's partition is forwarded there
    (streams/worker/explain_page.py). Faust's built-in views are all off:
    `/table/<name>/<key>/` answers with a customer's stored state (order ids,
    amounts, memberships) and `/router/` with the cluster's topology. Only the
    product's own pages (/healthz, /readyz, /metrics, /customers/{id}/explain)
    and Faust's plain status index at `/` remain.
    """
    middlewares = [require_bearer_token(api_token)] if api_token else []
    return {
        "web_bind": host,
        "web_host": advertised_host(host, advertised),
        "web_port": port,
        "web_in_thread": False,
        "web_tables_enabled": False,
        "web_router_enabled": False,
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "web_metrics_enabled": False,
        "web_application_options": {"middlewares": middlewares},
    }
