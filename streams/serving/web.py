"""HTTP API: checkout lookup, segment sizes and members, Prometheus metrics, health, dashboard."""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
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

from streams.serving.cache import RedisCache, parse_cursor
from streams.serving.lookup import (
    CACHE_INCOMPLETE,
    RETRY_AFTER_S,
    BadCustomerId,
    cache_unavailable,
    customer_id_from_path,
    error_body,
    lookup_answer,
    now_iso,
    readiness,
)
from streams.serving.lookup_reader import LookupReader
from streams.serving.metrics import CACHE_COMPLETE, REDIS_UP

SEGMENT_SIZE = Gauge(
    "segments_size",
    "Members of each segment (sum of its shards' SCARD); absent while the cache is incomplete"
    " or Redis does not answer.",
    ["segment"],
)
# A scrape must answer even when Redis does not (the alert on cache failures needs it),
# and within Prometheus' scrape timeout: Redis reads for /metrics get this long.
METRICS_REDIS_TIMEOUT_S = 2.0
# Other routes give a stalled Redis as long before answering 503.
REDIS_TIMEOUT_S = 5.0

Ready = Callable[[], bool | Awaitable[bool]]
CACHE_KEY: web.AppKey[RedisCache] = web.AppKey("cache", RedisCache)
# Open with a token too: the probes, and the dashboard page, which is static HTML with no
# data (its script takes the token from the URL fragment, `/#token=...`, and sends it as a
# bearer token on /segments and /segments/history; a browser cannot send one for the page).
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, reason: str, message: str) -> web.Response:
    return _json({"error": reason, "message": message}, status)


def _body(status: int, body: bytes) -> web.Response:
    response = web.Response(body=body, status=status, content_type="application/json")
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _unavailable(error: BaseException) -> web.Response:
    return _body(503, cache_unavailable(error))


def create_app(
    cache: RedisCache,
    *,
    segments: Sequence[str] = (),
    api_token: str | None = None,
    ready: Ready | None = None,
    registry: CollectorRegistry = REGISTRY,
    churn: Any = None,
    reader: LookupReader | None = None,
) -> web.Application:
    """The serving API over one RedisCache.

    segments: the rule set's segment names (for /segments, /metrics and 404s on unknown
    names); api_token: when set, every path but /healthz, /readyz and / (the dashboard
    page, no data) needs
    `Authorization: Bearer <token>`; ready: an extra /readyz condition (on top of: Redis
    answers and the cache's sentinel is there);
    churn: an optional ChurnHistory (streams.serving.churn) feeding /segments and the
    dashboard;
    reader: a LookupReader for the lookup (the pipelined one on a single node), else the client.
    """
    names = list(segments)
    expected_auth = f"Bearer {api_token}".encode() if api_token else None

    @web.middleware
    async def auth(
        request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if expected_auth is not None and request.path not in _OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected_auth):
                response = _error(401, "unauthorized", "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return await handler(request)

    async def customer_segments(request: web.Request) -> web.Response:
        # The raw segment, not aiohttp's decoded match: the fast path sees only raw bytes,
        # and both must apply customer_id_from_path to the same thing.
        raw_path = request.raw_path.split("?", 1)[0]
        if not (raw_path.startswith("/customers/") and raw_path.endswith("/segments")):
            return _error(404, "not-found", "no such route")  # e.g. an escaped "customers"
        raw_id = raw_path[len("/customers/") : -len("/segments")]
        try:
            customer_id = customer_id_from_path(raw_id.encode("latin-1"))
        except (BadCustomerId, UnicodeEncodeError) as error:
            return _body(400, error_body("bad-customer-id", str(error)))
        try:
            if reader is not None:
                flat, complete = await reader.pair_future(
                    (b"HGETALL", cache.keys.customer(customer_id).encode()),
                    (b"EXISTS", cache.keys.sentinel_of(customer_id, cache.cluster).encode()),
                )
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
            else:
                fields, complete = await asyncio.wait_for(
                    cache.customer_fields(customer_id), REDIS_TIMEOUT_S
                )
        except _REDIS_ERRORS as error:
            return _unavailable(error)
        return _body(*lookup_answer(customer_id, fields, complete))

    async def complete_sizes(timeout: float) -> dict[str, int] | None:
        """Segment sizes, or None while the cache is incomplete (they would be too small)."""

        async def read() -> dict[str, int] | None:
            if not await cache.is_complete():
                return None
            return await cache.segment_sizes(names)

        try:
            sizes = await asyncio.wait_for(read(), timeout)
        except _REDIS_ERRORS:
            REDIS_UP.set(0)
            raise
        REDIS_UP.set(1)
        CACHE_COMPLETE.set(0 if sizes is None else 1)
        if sizes is None:
            SEGMENT_SIZE.clear()
        else:
            for name, size in sizes.items():
                SEGMENT_SIZE.labels(name).set(size)
        return sizes

    async def segments_index(request: web.Request) -> web.Response:
        try:
            sizes = await complete_sizes(REDIS_TIMEOUT_S)
        except _REDIS_ERRORS as error:
            return _unavailable(error)
        if sizes is None:
            return _body(503, CACHE_INCOMPLETE)
        rates = churn.rates(time.time()) if churn is not None else {}
        body = [{"name": name, "size": sizes[name], **rates.get(name, {})} for name in names]
        return _json({"segments": body, "as_of": now_iso()})

    async def segments_history(request: web.Request) -> web.Response:
        if churn is None:
            return _json({"hours": [], "entered": {}, "exited": {}, "exit_causes": {}, "sizes": []})
        return _json(churn.history(time.time()))

    async def sample_sizes_forever(app: web.Application) -> Any:
        async def loop() -> None:
            while True:
                try:
                    sizes = await complete_sizes(REDIS_TIMEOUT_S)
                    if sizes is not None:
                        churn.sample_sizes(sizes, time.time())
                except _REDIS_ERRORS:
                    pass  # a gap in the chart; /readyz and segments_cache_redis_up tell why
                await asyncio.sleep(churn.sample_every_s)  # a sampling period, not a sync

        task = asyncio.create_task(loop())
        yield
        task.cancel()

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
            shard, scan = parse_cursor(request.query.get("cursor", "0"))
        except ValueError as error:
            return _error(400, "bad-cursor", str(error))

        async def page() -> tuple[list[str], str] | None:
            if not await cache.is_complete():
                return None  # a page of a cache being rebuilt would silently miss members
            return await cache.members_page(name, f"{shard}:{scan}", count)

        try:
            result = await asyncio.wait_for(page(), REDIS_TIMEOUT_S)
        except _REDIS_ERRORS as error:
            return _unavailable(error)
        if result is None:
            return _body(503, CACHE_INCOMPLETE)
        members, cursor = result
        return _json({"segment": name, "members": members, "cursor": cursor})

    async def metrics(request: web.Request) -> web.Response:
        # Always 200 with this process's own metrics: when Redis does not answer, the
        # sizes are left out and segments_cache_redis_up says 0.
        try:
            await complete_sizes(METRICS_REDIS_TIMEOUT_S)
        except _REDIS_ERRORS:
            SEGMENT_SIZE.clear()
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        """Ready when Redis answers, the cache is complete and the hook (if any) agrees."""
        try:
            complete: bool | BaseException = await asyncio.wait_for(
                cache.is_complete(), METRICS_REDIS_TIMEOUT_S
            )
        except _REDIS_ERRORS as error:
            complete = error
        status, body = readiness(complete)
        if status == 200 and ready is not None:
            try:
                result = ready()
                ok = bool(await result) if inspect.isawaitable(result) else bool(result)
            except Exception as error:  # a failing probe means "not ready", never a 500
                ok, body = False, orjson.dumps({"status": "not-ready", "reason": repr(error)})
            if not ok:
                status = 503
                if body == b'{"status":"ready"}':
                    body = b'{"status":"not-ready","reason":"cache-sink"}'
        return _body(status, body)

    async def openapi(request: web.Request) -> web.Response:
        return _json(OPENAPI)

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(text=DASHBOARD_HTML, content_type="text/html")

    app = web.Application(middlewares=[auth])
    app[CACHE_KEY] = cache
    app.router.add_get("/customers/{customer_id}/segments", customer_segments)
    app.router.add_get("/segments", segments_index)
    app.router.add_get("/segments/history", segments_history)
    app.router.add_get("/segments/{name}/members", segment_members)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/", dashboard)
    if churn is not None and names:
        app.cleanup_ctx.append(sample_sizes_forever)
    return app


def _op(
    summary: str, schema: dict[str, Any], parameters: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": parameters or [],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
            "401": {"description": "missing or wrong bearer token (when a token is set)"},
            "503": {
                "description": "cache-unavailable (Redis does not answer) or cache-rebuilding "
                "(the cache is missing or being rebuilt); Retry-After says when to ask again"
            },
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
                        "traits": {"type": "object", "additionalProperties": _STR},
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
        "/segments/history": {
            "get": _op(
                "Dashboard series: entries/exits per hour (48 h), exit causes, sampled sizes.",
                {"type": "object"},
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
                "summary": "Ready to serve (Redis answers and the cache is complete)",
                "security": [],
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
    },
}


# The churn dashboard: one page, inline CSS and JS (no CDN, works offline); it polls
# /segments and /segments/history and draws SVG charts itself.
DASHBOARD_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>purchase-segments: churn</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em 2em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff}td,th{padding:.3em .8em;border-bottom:1px solid #ddd}
th{text-align:left;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777}#err{color:#b00}.legend span{margin-right:1em;white-space:nowrap}
.sw{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:middle}
svg{background:#fff;border:1px solid #ddd}
</style></head><body>
<h1>Segment churn</h1>
<p class="muted">Sizes from Redis; entries and exits as applied by this process's cache
sink. <span id="asof"></span> <span id="err"></span></p>
<table><thead><tr><th>segment</th><th>size</th><th>entered last hour</th>
<th>exited last hour</th><th>top exit cause</th></tr></thead><tbody id="rows"></tbody></table>
<h2>Segment sizes over time</h2>
<div id="sizes"></div><div class="legend" id="legend"></div>
<h2>Entries and exits per hour (last 48 h, all segments)</h2>
<div id="flow"></div>
<div class="legend"><span><i class="sw" style="background:#2a9d5c"></i>entered</span>
<span><i class="sw" style="background:#d1495b"></i>exited</span></div>
<h2>Top exit causes (last 48 h)</h2>
<table><thead><tr><th>segment</th><th>causes</th></tr></thead><tbody id="causes"></tbody></table>
<script>
const COLORS=["#3366cc","#dc3912","#ff9900","#109618","#990099","#0099c6","#dd4477",
  "#66aa00","#b82e2e","#316395"];
const esc=s=>String(s).replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
function headers(){const h={};const t=new URLSearchParams(location.hash.slice(1)).get("token");
  if(t) h["Authorization"]="Bearer "+t;return h;}
async function get(path){const r=await fetch(path,{headers:headers()});
  if(!r.ok) throw new Error(path+": HTTP "+r.status);return r.json();}
function lineChart(samples,names){
  const W=720,H=200,P=36;if(samples.length<1) return '<p class="muted">no samples yet</p>';
  const t0=samples[0].at,t1=Math.max(samples[samples.length-1].at,t0+1);
  let max=1;for(const s of samples) for(const n of names) max=Math.max(max,s.sizes[n]||0);
  const x=t=>P+(t-t0)*(W-2*P)/(t1-t0),y=v=>H-P+(-(v)*(H-2*P)/max);
  let out='<svg width="'+W+'" height="'+H+'" role="img" aria-label="segment sizes over time">';
  out+='<text x="4" y="'+(P-6)+'" font-size="11">'+max+'</text><text x="4" y="'+(H-P)+
    '" font-size="11">0</text>';
  names.forEach((n,i)=>{const pts=samples.map(s=>x(s.at).toFixed(1)+","+
    y(s.sizes[n]||0).toFixed(1)).join(" ");
    out+=samples.length>1?'<polyline fill="none" stroke-width="2" stroke="'+COLORS[i%10]+
      '" points="'+pts+'"/>':'<circle r="3" fill="'+COLORS[i%10]+'" cx="'+x(samples[0].at)+
      '" cy="'+y(samples[0].sizes[n]||0)+'"/>';});
  const d=t=>new Date(t*1000).toISOString().slice(11,16);
  out+='<text x="'+P+'" y="'+(H-8)+'" font-size="11">'+d(t0)+'</text><text x="'+(W-P-30)+
    '" y="'+(H-8)+'" font-size="11">'+d(t1)+' UTC</text></svg>';
  return out;}
function barChart(hist){
  const W=720,H=180,P=30,n=hist.hours.length;if(!n) return "";
  const sum=series=>hist.hours.map((_,i)=>Object.values(series).reduce((a,s)=>a+s[i],0));
  const ent=sum(hist.entered),ex=sum(hist.exited);
  const max=Math.max(1,...ent,...ex),bw=(W-2*P)/n;
  let out='<svg width="'+W+'" height="'+H+'" role="img" aria-label="entries and exits per hour">';
  out+='<text x="2" y="'+(P-8)+'" font-size="11">'+max+'/h</text>';
  for(let i=0;i<n;i++){const x=P+i*bw,he=(H-2*P)*ent[i]/max,hx=(H-2*P)*ex[i]/max;
    out+='<rect x="'+x.toFixed(1)+'" y="'+(H-P-he).toFixed(1)+'" width="'+(bw/2-1).toFixed(1)+
      '" height="'+he.toFixed(1)+'" fill="#2a9d5c"><title>'+ent[i]+' entered</title></rect>';
    out+='<rect x="'+(x+bw/2).toFixed(1)+'" y="'+(H-P-hx).toFixed(1)+'" width="'+
      (bw/2-1).toFixed(1)+'" height="'+hx.toFixed(1)+'" fill="#d1495b"><title>'+ex[i]+
      ' exited</title></rect>';}
  out+='<text x="'+P+'" y="'+(H-8)+'" font-size="11">-48 h</text><text x="'+(W-P-30)+
    '" y="'+(H-8)+'" font-size="11">now</text></svg>';
  return out;}
async function refresh(){
  try{
    const [data,hist]=await Promise.all([get("segments"),get("segments/history")]);
    document.getElementById("err").textContent="";
    document.getElementById("asof").textContent="As of "+data.as_of+".";
    const names=data.segments.map(s=>s.name);
    document.getElementById("rows").innerHTML=data.segments.map(s=>"<tr><td>"+esc(s.name)+
      "</td><td class=n>"+s.size+"</td><td class=n>"+(s.entered_last_hour??0)+
      "</td><td class=n>"+(s.exited_last_hour??0)+"</td><td>"+esc(s.top_exit_cause||"")+
      "</td></tr>").join("");
    const samples=hist.sizes.length?hist.sizes:[{at:Date.now()/1000,
      sizes:Object.fromEntries(data.segments.map(s=>[s.name,s.size]))}];
    document.getElementById("sizes").innerHTML=lineChart(samples,names);
    document.getElementById("legend").innerHTML=names.map((n,i)=>'<span><i class="sw" '+
      'style="background:'+COLORS[i%10]+'"></i>'+esc(n)+'</span>').join("");
    document.getElementById("flow").innerHTML=barChart(hist);
    const rows=Object.entries(hist.exit_causes).map(([seg,c])=>"<tr><td>"+esc(seg)+
      "</td><td>"+Object.entries(c).sort((a,b)=>b[1]-a[1]).map(([k,v])=>esc(k||"?")+
      " "+v).join(", ")+"</td></tr>");
    document.getElementById("causes").innerHTML=rows.join("")||
      '<tr><td colspan=2 class="muted">no exits yet</td></tr>';
    document.body.dataset.ready="1";
  }catch(e){document.getElementById("err").textContent=String(e);}
}
refresh();setInterval(refresh,10000);
</script></body></html>
"""
