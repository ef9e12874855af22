"""The demo's checkout lookup sends the bearer token when SEGMENTS_API_TOKEN is set, and
shows the customer's segments and traits."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from streams.cli.demo import _lookup
from streams.serving.web import create_app
from tests.unit.test_web_api import make_cache

pytestmark = pytest.mark.unit


def lookups(token: str | None) -> str:
    async def main() -> str:
        cache, _redis = make_cache()
        runner = web.AppRunner(create_app(cache, segments=["vip"], api_token="s3cret"))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(_lookup, f"http://127.0.0.1:{port}", "c-1", token)
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def test_the_demo_lookup_sends_the_token() -> None:
    assert lookups("s3cret").startswith("c-1 -> big_spender, vip; lifecycle=loyal (")


def test_without_the_token_the_demo_shows_the_refusal() -> None:
    assert lookups(None) == "c-1: HTTP Error 401: Unauthorized"
