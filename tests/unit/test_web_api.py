"""The HTTP shell over a fake Redis: routes, JSON shapes, auth, paging, health and metrics."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

# `segments serve` always runs the cache sink, whose metrics register at import; without this
# import the /metrics tests passed only when another test module had imported it first.
import streams.serving.cache_sink  # noqa: F401
from streams.serving.cache import SHARDS, RedisCache, shard_of
from streams.serving.churn import ChurnHistory
from streams.serving.web import create_app

pytestmark = pytest.mark.unit


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis, self.calls = redis, []

    def scard(self, key):
        self.calls.append(lambda: len(self.redis.sets.get(key, ())))

    def hgetall(self, key):
        self.calls.append(lambda: dict(self.redis.hashes.get(key, {})))

    def exists(self, key):
        self.calls.append(lambda: int(key in self.redis.strings))

    async def execute(self):
        self.redis.check_up()
        return [call() for call in self.calls]


class FakeRedis:
    """The handful of commands the web layer uses, over dicts; `up = False` fails them all."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.sets: dict[str, set[str]] = {}
        self.strings: dict[str, str] = {}
        self.up = True

    def check_up(self) -> None:
        if not self.up:
            raise ConnectionError("Redis is down")

    def register_script(self, _text):
        return None

    def pipeline(self, transaction=False):
        return FakePipeline(self)

    async def hgetall(self, key):
        self.check_up()
        return dict(self.hashes.get(key, {}))

    async def exists(self, key):
        self.check_up()
        return int(key in self.strings)

    async def sscan(self, key, cursor=0, count=10):
        self.check_up()
        members = sorted(self.sets.get(key, ()))
        page = members[cursor : cursor + count]
        following = cursor + count
        return (following if following < len(members) else 0), page

    async def ping(self):
        self.check_up()
        return True


def make_cache() -> tuple[RedisCache, FakeRedis]:
    redis = FakeRedis()
    cache = RedisCache(redis, prefix="t:")  # type: ignore[arg-type]
    redis.hashes["t:cust:c-1"] = {
        "vip": "3|1|2026-11-20T14:03:11.120Z",
        "win_back": "2|0|2026-10-01T00:00:00Z",
        "big_spender": "1|1|2026-01-02T00:00:00Z",
        "trait:lifecycle": '2|"loyal"',
    }
    for i in range(50):
        customer = f"c-{i}"
        redis.sets.setdefault(cache.keys.members("vip", shard_of(customer)), set()).add(customer)
    redis.strings[cache.keys.sentinel()] = "resynced"  # built from segment-memberships
    return cache, redis


def call(app, method, path, headers=None, check=None):
    async def main():
        async with TestClient(TestServer(app)) as client:
            response = await client.request(method, path, headers=headers or {})
            text = await response.text()
            return response.status, text, response

    return asyncio.run(main())


def get_json(app, path, headers=None):
    import orjson

    status, text, _ = call(app, "GET", path, headers)
    return status, orjson.loads(text)


def test_lookup_lists_member_segments_sorted_with_since():
    cache, _ = make_cache()
    status, body = get_json(create_app(cache, segments=["vip"]), "/customers/c-1/segments")
    assert status == 200
    assert body["customer_id"] == "c-1"
    assert body["segments"] == [
        {"name": "big_spender", "since": "2026-01-02T00:00:00Z"},
        {"name": "vip", "since": "2026-11-20T14:03:11.120Z"},
    ]
    assert body["traits"] == {"lifecycle": "loyal"}
    assert body["as_of"].endswith("Z")


def test_unknown_customer_gets_200_and_an_empty_list():
    cache, _ = make_cache()
    status, body = get_json(create_app(cache), "/customers/nobody/segments")
    assert status == 200
    assert body["segments"] == [] and body["traits"] == {}


def test_bearer_token_is_required_when_configured():
    cache, _ = make_cache()
    app = create_app(cache, api_token="s3cret")
    assert get_json(app, "/customers/c-1/segments")[0] == 401
    bad = {"Authorization": "Bearer nope"}
    assert get_json(create_app(cache, api_token="s3cret"), "/customers/c-1/segments", bad)[0] == 401
    good = {"Authorization": "Bearer s3cret"}
    app = create_app(cache, api_token="s3cret")
    assert get_json(app, "/customers/c-1/segments", good)[0] == 200
    # probes stay open so an orchestrator needs no secret
    assert get_json(create_app(cache, api_token="s3cret"), "/healthz")[0] == 200


def test_the_dashboard_page_opens_with_a_token_set_but_its_data_needs_it():
    # A browser cannot send a bearer token for the page it opens: the page (static HTML)
    # is open, its script sends the token from /#token=... on the data routes.
    cache, _ = make_cache()
    status, html, response = call(create_app(cache, api_token="s3cret"), "GET", "/")
    assert status == 200 and response.content_type == "text/html"
    assert 'get("token")' in html and '"Bearer "+t' in html
    for path in ("/segments", "/segments/history"):
        assert get_json(create_app(cache, api_token="s3cret"), path)[0] == 401
        good = {"Authorization": "Bearer s3cret"}
        assert get_json(create_app(cache, api_token="s3cret"), path, good)[0] == 200


def test_members_pages_through_every_shard():
    cache, _ = make_cache()
    seen, cursor, pages = [], "0", 0
    while True:
        status, body = get_json(
            create_app(cache, segments=["vip"]), f"/segments/vip/members?count=7&cursor={cursor}"
        )
        assert status == 200
        seen += body["members"]
        cursor, pages = body["cursor"], pages + 1
        if cursor == "0":
            break
        assert pages < 100
    assert sorted(seen) == sorted(f"c-{i}" for i in range(50))


def test_members_rejects_bad_input():
    cache, _ = make_cache()
    app_args = {"segments": ["vip"]}
    assert get_json(create_app(cache, **app_args), "/segments/nope/members")[0] == 404
    assert get_json(create_app(cache, **app_args), "/segments/vip/members?count=0")[0] == 400
    bad = f"/segments/vip/members?cursor={SHARDS}:0"
    assert get_json(create_app(cache, **app_args), bad)[0] == 400


def test_segments_sizes_and_churn_rates():
    cache, _ = make_cache()
    churn = ChurnHistory()
    import time

    now = time.time()
    churn.record("vip", "entered", "purchase", now)
    churn.record("vip", "exited", "time", now)
    churn.record("vip", "exited", "time", now)
    churn.record("vip", "exited", "return", now)
    status, body = get_json(create_app(cache, segments=["vip", "runner"], churn=churn), "/segments")
    assert status == 200
    vip, runner = body["segments"]
    assert vip["name"] == "vip" and vip["size"] == 50
    assert vip["entered_last_hour"] == 1 and vip["exited_last_hour"] == 3
    assert vip["top_exit_cause"] == "time"
    assert runner == {"name": "runner", "size": 0}


def test_metrics_exposes_segment_sizes():
    cache, _ = make_cache()
    status, text, _ = call(create_app(cache, segments=["vip"]), "GET", "/metrics")
    assert status == 200
    assert 'segments_size{segment="vip"} 50.0' in text
    assert "segments_changes_total" in text or "segments_time_in_segment_seconds" in text


def test_readyz_needs_redis_the_complete_cache_and_the_hook():
    cache, redis = make_cache()
    assert get_json(create_app(cache), "/readyz") == (200, {"status": "ready"})
    assert get_json(create_app(cache, ready=lambda: False), "/readyz")[0] == 503
    del redis.strings[cache.keys.sentinel()]  # an emptied Redis, or a rebuild under way
    assert get_json(create_app(cache, ready=lambda: True), "/readyz") == (
        503,
        {"status": "not-ready", "reason": "cache-rebuilding"},
    )
    redis.up = False
    status, body = get_json(create_app(cache, ready=lambda: True), "/readyz")
    assert (status, body["reason"]) == (503, "cache-unavailable")


def test_openapi_describes_every_route_and_dashboard_needs_no_cdn():
    cache, _ = make_cache()
    status, spec = get_json(create_app(cache), "/openapi.json")
    assert status == 200
    assert "/customers/{customer_id}/segments" in spec["paths"]
    assert "/segments/{name}/members" in spec["paths"]
    status, html, _ = call(create_app(cache), "GET", "/")
    assert status == 200
    assert "<script>" in html and "http://" not in html and "https://" not in html


def test_lookup_answers_503_when_redis_does_not():
    cache, redis = make_cache()
    redis.up = False
    status, body = get_json(create_app(cache), "/customers/c-1/segments")
    assert status == 503
    assert body["error"] == "cache-unavailable"


def test_members_answers_400_for_any_malformed_cursor():
    cache, _ = make_cache()
    app_args = {"segments": ["vip"]}
    for cursor in ["x", "1:", ":5", "1:x", "1:1:1", "-1:0", "1:-5", "1:5_0", "1: 5",
                   "16:0", "3:18446744073709551616", "99999999999999999999:0"]:  # fmt: skip
        status, body = get_json(
            create_app(cache, **app_args), f"/segments/vip/members?cursor={quote(cursor)}"
        )
        assert status == 400, cursor
        assert body["error"] == "bad-cursor" and "cursor" in body["message"]
    status, _ = get_json(create_app(cache, **app_args), "/segments/vip/members?cursor=15:7")
    assert status == 200


def test_while_the_cache_is_incomplete_nothing_answers_from_it():
    """No sentinel (an emptied Redis, or a rebuild under way): 503, never an empty 200."""
    cache, redis = make_cache()
    del redis.strings[cache.keys.sentinel()]
    for path in ["/customers/c-1/segments", "/customers/nobody/segments", "/segments",
                 "/segments/vip/members"]:  # fmt: skip
        status, text, response = call(create_app(cache, segments=["vip"]), "GET", path)
        assert status == 503, path
        assert orjson.loads(text)["error"] == "cache-rebuilding"
        assert response.headers["Retry-After"] == "1"
    status, text, _ = call(create_app(cache, segments=["vip"]), "GET", "/metrics")
    assert status == 200
    assert "segments_cache_complete 0.0" in text and "segments_size{" not in text


def test_while_redis_is_down_metrics_answer_and_the_rest_says_503():
    cache, redis = make_cache()
    redis.up = False
    status, text, _ = call(create_app(cache, segments=["vip"]), "GET", "/metrics")
    assert status == 200
    assert "segments_cache_redis_up 0.0" in text
    assert "segments_cache_write_failures_total" in text  # what the alert reads
    assert "segments_size{" not in text  # no stale size for a cache it cannot read
    for path in ["/segments", "/segments/vip/members", "/customers/c-1/segments"]:
        status, text, response = call(create_app(cache, segments=["vip"]), "GET", path)
        assert status == 503, path
        body = orjson.loads(text)
        assert body["error"] == "cache-unavailable" and "Redis did not answer" in body["message"]
        assert response.headers["Retry-After"] == "1"
    redis.up = True
    status, text, _ = call(create_app(cache, segments=["vip"]), "GET", "/metrics")
    assert "segments_cache_redis_up 1.0" in text and 'segments_size{segment="vip"} 50.0' in text


def test_the_lookup_refuses_ids_that_are_not_utf8_or_too_long():
    cache, redis = make_cache()
    redis.hashes["t:cust:%FF"] = {"vip": "1|1|2026-01-01T00:00:00Z"}  # what aiohttp looked up
    for path in ["/customers/%FF/segments", f"/customers/{'x' * 129}/segments",
                 "/customers/%C3%28/segments"]:  # fmt: skip
        status, body = get_json(create_app(cache), path)
        assert (status, body["error"]) == (400, "bad-customer-id"), path
    status, body = get_json(create_app(cache), f"/customers/{'é' * 128}/segments")
    assert status == 200 and body["customer_id"] == "é" * 128
    status, body = get_json(create_app(cache), "/customers/a%20b%2F%C3%BC/segments")
    assert status == 200 and body["customer_id"] == "a b/ü"
