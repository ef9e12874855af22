"""HTTP API: checkout lookup, segment sizes and members, Prometheus metrics, health, dashboard."""

from __future__ import annotations

import hmac
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    generate_latest,
)
from redis.exceptions import RedisError

from streams.sinks.redis import PipelinedReader, RedisCache, member_segments

SEGMENT_SIZE = Gauge(
    "segments_size", "Members of each segment (sum of its shards' SCARD).", ["segment"]
)

Ready = Callable[[], bool | Awaitable[bool]]
CACHE_KEY: web.AppKey[RedisCache] = web.AppKey("cache", RedisCache)
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})


_last_second: list[Any] = [-1, ""]


def now_iso() -> str:
    """The wall clock as ISO-8601 UTC with milliseconds and a Z (the lookup's `as_of`)."""
    now = time.time()
    second = int(now)
    if second != _last_second[0]:  # strftime once a second, not per request
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second[0], _last_second[1] = second, text
    return f"{_last_second[1]}{int((now - second) * 1000):03d}Z"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, reason: str, message: str) -> web.Response:
    return _json({"error": reason, "message": message}, status)


def create_app(
    cache: RedisCache,
    *,
    segments: Sequence[str] = (),
    api_token: str | None = None,
    ready: Ready | None = None,
    registry: CollectorRegistry = REGISTRY,
    churn: Any = None,
    reader: PipelinedReader | None = None,
) -> web.Application:
    """The serving API over one RedisCache.

    segments: the rule set's segment names (for /segments, /metrics and 404s on unknown
    names); api_token: when set, every path but /healthz and /readyz needs
    `Authorization: Bearer <token>`; ready: the /readyz hook (default: Redis answers PING);
    churn: an optional ChurnHistory (streams.cache_sink) feeding /segments and the dashboard;
    reader: a PipelinedReader for the lookup's HGETALL (the hot path), else the client.
    """
    names = list(segments)
    hgetall = reader.hgetall if reader is not None else None
    expected_auth = f"Bearer {api_token}".encode() if api_token else None

    @web.middleware
    async def auth(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]):
        if expected_auth is not None and request.path not in _OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected_auth):
                response = _error(401, "unauthorized", "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return await handler(request)

    async def customer_segments(request: web.Request) -> web.Response:
        customer_id = request.match_info["customer_id"]
        key = cache.keys.customer(customer_id)
        try:
            fields = await (hgetall(key) if hgetall is not None else cache.client.hgetall(key))
        except (RedisError, OSError) as error:
            return _error(503, "cache-unavailable", f"Redis did not answer: {type(error).__name__}")
        return _json(
            {
                "customer_id": customer_id,
                "segments": [{"name": n, "since": s} for n, s in member_segments(fields)],
                "as_of": now_iso(),
            }
        )

    async def segments_index(request: web.Request) -> web.Response:
        sizes = await cache.segment_sizes(names)
        for name, size in sizes.items():
            SEGMENT_SIZE.labels(name).set(size)
        rates = churn.rates(time.time()) if churn is not None else {}
        body = [{"name": name, "size": sizes[name], **rates.get(name, {})} for name in names]
        return _json({"segments": body, "as_of": now_iso()})

    async def segment_members(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if names and name not in names:
            return _error(404, "unknown-segment", f"no segment named {name!r}")
        try:
            count = int(request.query.get("count", "100"))
            if not 1 <= count <= 1000:
                raise ValueError
        except ValueError:
            return _error(400, "bad-count", "count must be an integer from 1 to 1000")
        try:
            members, cursor = await cache.members_page(
                name, request.query.get("cursor", "0"), count
            )
        except ValueError as error:
            return _error(400, "bad-cursor", str(error))
        return _json({"segment": name, "members": members, "cursor": cursor})

    async def metrics(request: web.Request) -> web.Response:
        if names:
            for name, size in (await cache.segment_sizes(names)).items():
                SEGMENT_SIZE.labels(name).set(size)
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        try:
            if ready is None:
                ok = bool(await cache.client.ping())
            else:
                result = ready()
                ok = bool(await result) if inspect.isawaitable(result) else bool(result)
        except Exception as error:  # a failing probe means "not ready", never a 500
            return _json({"status": "not-ready", "error": type(error).__name__}, 503)
        return _json({"status": "ready" if ok else "not-ready"}, 200 if ok else 503)

    async def openapi(request: web.Request) -> web.Response:
        return _json(OPENAPI)

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(text=DASHBOARD_HTML, content_type="text/html")

    app = web.Application(middlewares=[auth])
    app[CACHE_KEY] = cache
    app.router.add_get("/customers/{customer_id}/segments", customer_segments)
    app.router.add_get("/segments", segments_index)
    app.router.add_get("/segments/{name}/members", segment_members)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/", dashboard)
    return app


def _op(summary: str, schema: dict[str, Any], parameters: list[dict[str, Any]] | None = None):
    return {
        "summary": summary,
        "parameters": parameters or [],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
            "401": {"description": "missing or wrong bearer token (when a token is set)"},
        },
    }


_STR = {"type": "string"}
_INSTANT = {"type": "string", "format": "date-time"}
OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "purchase-segments serving API", "version": "1"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/customers/{customer_id}/segments": {
            "get": _op(
                "Segments a customer is in now (unknown customers: empty list), from Redis.",
                {
                    "type": "object",
                    "properties": {
                        "customer_id": _STR,
                        "segments": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"name": _STR, "since": _INSTANT},
                            },
                        },
                        "as_of": _INSTANT,
                    },
                },
                [{"name": "customer_id", "in": "path", "required": True, "schema": _STR}],
            )
        },
        "/segments": {
            "get": _op(
                "Every segment with its size and its entries/exits in the last hour.",
                {"type": "object", "properties": {"segments": {"type": "array"}}},
            )
        },
        "/segments/{name}/members": {
            "get": _op(
                'One page of a segment\'s members; pass `cursor` back until it is "0".',
                {
                    "type": "object",
                    "properties": {
                        "segment": _STR,
                        "members": {"type": "array", "items": _STR},
                        "cursor": _STR,
                    },
                },
                [
                    {"name": "name", "in": "path", "required": True, "schema": _STR},
                    {"name": "cursor", "in": "query", "schema": _STR},
                    {
                        "name": "count",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
            )
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}
        },
        "/healthz": {
            "get": {
                "summary": "The process is alive",
                "security": [],
                "responses": {"200": {"description": "ok"}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Ready to serve (Redis answers)",
                "security": [],
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
    },
}


# The churn dashboard: one page, inline CSS and JS, no CDN; it polls /segments.
DASHBOARD_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>purchase-segments: churn</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;min-width:40em}td,th{padding:.3em .8em;border-bottom:1px solid #ddd}
th{text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
#err{color:#b00}
</style></head><body>
<h1>Segment churn</h1>
<p>Sizes from Redis; entries and exits in the last hour from this worker. <span id="asof"></span>
<span id="err"></span></p>
<table><thead><tr><th>segment</th><th>size</th><th>entered/h</th><th>exited/h</th>
<th>top exit cause</th><th>size over time</th></tr></thead><tbody id="rows"></tbody></table>
<script>
const history = {};
function spark(values){
  if(values.length<2) return "";
  const w=160,h=24,min=Math.min(...values),max=Math.max(...values),span=(max-min)||1;
  const pts=values.map((v,i)=>(i*w/(values.length-1)).toFixed(1)+","+
    (h-(v-min)*h/span).toFixed(1)).join(" ");
  return '<svg width="'+w+'" height="'+h+'"><polyline fill="none" stroke="#36c" points="'+
    pts+'"/></svg>';
}
async function refresh(){
  try{
    const headers={};const t=new URLSearchParams(location.hash.slice(1)).get("token");
    if(t) headers["Authorization"]="Bearer "+t;
    const r=await fetch("segments",{headers});
    if(!r.ok) throw new Error("HTTP "+r.status);
    const data=await r.json();
    document.getElementById("err").textContent="";
    document.getElementById("asof").textContent="as of "+data.as_of;
    const rows=data.segments.map(s=>{
      (history[s.name]=history[s.name]||[]).push(s.size);
      if(history[s.name].length>120) history[s.name].shift();
      const cause=s.top_exit_cause||"";
      return "<tr><td>"+s.name+"</td><td class=n>"+s.size+"</td><td class=n>"+
        (s.entered_last_hour??"")+"</td><td class=n>"+(s.exited_last_hour??"")+
        "</td><td>"+cause+"</td><td>"+spark(history[s.name])+"</td></tr>";
    });
    document.getElementById("rows").innerHTML=rows.join("");
  }catch(e){document.getElementById("err").textContent=String(e);}
}
refresh();setInterval(refresh,5000);
</script></body></html>
"""
