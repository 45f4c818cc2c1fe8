"""rtml_runtime.resp against a real redis-server: pipelining, errors, handshake, outages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvloop

from rtml_runtime.resp import RedisConnectionError, RedisError, RespClient, encode
from tests.runtime_proc import RedisServer

pytestmark = pytest.mark.redis
Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Both event loops: the runtime serves on uvloop, whose transports differ from asyncio's."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own: these tests stop it, lock it and change its password."""
    s = RedisServer(tmp_path)
    s.start()
    yield s
    s.stop()


def test_concurrent_calls_pipeline_on_one_connection_and_each_gets_its_reply(
    server: RedisServer, run: Run
) -> None:
    sync = redis.Redis.from_url(server.url)
    for i in range(200):
        sync.hset(f"k{i}", mapping={"a": f"a{i}", "b": f"b{i}"})

    async def main() -> list[object]:
        client = RespClient(server.url)
        try:
            replies = await asyncio.gather(
                *(
                    client.call(b"HMGET", f"k{i}".encode(), b"a", b"missing", b"b")
                    for i in range(200)
                )
            )
            clients = await client.call(b"CLIENT", b"LIST")
        finally:
            await client.close()
        assert clients.count(b"cmd=client") == 1  # one socket carried all 200
        return replies

    replies = run(main())
    assert replies == [[f"a{i}".encode(), None, f"b{i}".encode()] for i in range(200)]


def test_an_error_reply_fails_only_its_own_call(server: RedisServer, run: Run) -> None:
    async def main() -> None:
        client = RespClient(server.url)
        try:
            with pytest.raises(RedisError, match="wrong number of arguments"):
                await client.call(b"HMGET", b"only-a-key")
            assert await client.call(b"PING") == b"PONG"
        finally:
            await client.close()

    run(main())


def test_a_pipeline_is_one_write_whose_replies_come_back_in_order(
    server: RedisServer, run: Run
) -> None:
    async def main() -> None:
        client = RespClient(server.url)
        try:
            commands = [encode(b"XADD", b"s", b"*", b"n", str(i).encode()) for i in range(50)]
            ids = await client.pipeline(commands)
            assert len(ids) == 50
            assert ids == sorted(ids, key=lambda x: tuple(map(int, x.split(b"-"))))
            entries = await client.call(b"XRANGE", b"s", b"-", b"+")
            assert [e[1] for e in entries] == [[b"n", str(i).encode()] for i in range(50)]
            # An error reply raises, after the commands around it ran.
            with pytest.raises(RedisError, match="wrong number of arguments"):
                await client.pipeline([encode(b"PING"), encode(b"XLEN"), encode(b"INCR", b"c")])
            assert await client.call(b"GET", b"c") == b"1"
        finally:
            await client.close()

    run(main())


def test_password_and_database_come_from_the_url(server: RedisServer, run: Run) -> None:
    sync = redis.Redis.from_url(server.url)
    sync.execute_command("SELECT", 3)
    sync.config_set("requirepass", "s3cret/!")
    sync = redis.Redis(port=server.port, db=3, password="s3cret/!")
    sync.set("where", "db3")

    async def main() -> None:
        good = RespClient(f"redis://:s3cret%2F%21@127.0.0.1:{server.port}/3")
        bad = RespClient(f"redis://:wrong@127.0.0.1:{server.port}/3")
        try:
            assert await good.call(b"GET", b"where") == b"db3"
            with pytest.raises(RedisError, match="refused"):
                await bad.call(b"GET", b"where")
        finally:
            await good.close()
            await bad.close()

    run(main())


def test_a_cancelled_call_does_not_shift_the_replies_of_later_ones(
    server: RedisServer, run: Run
) -> None:
    redis.Redis.from_url(server.url).set("x", "1")

    async def main() -> None:
        client = RespClient(server.url)
        try:
            # BLPOP on an empty list blocks the connection for 0.3 s; the caller gives up first.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.call(b"BLPOP", b"empty", b"0.3"), 0.05)
            assert await client.call(b"GET", b"x") == b"1"  # not BLPOP's late nil
        finally:
            await client.close()

    run(main())


def test_a_server_that_stops_answering_is_dropped_and_redialled(
    server: RedisServer, run: Run
) -> None:
    async def main() -> None:
        client = RespClient(server.url, connect_timeout_s=0.5, stale_after_s=0.2)
        try:
            assert await client.call(b"PING") == b"PONG"
            server.pause()
            for _ in range(2):
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(client.call(b"PING"), 0.3)
            server.resume()
            # The oldest call has waited past stale_after_s: this call dials a new socket.
            assert await asyncio.wait_for(client.call(b"PING"), 2) == b"PONG"
        finally:
            server.resume()
            await client.close()

    run(main())


def test_a_down_server_is_a_connection_error_and_recovery_needs_no_restart(
    server: RedisServer, run: Run
) -> None:
    async def main() -> None:
        client = RespClient(server.url, connect_timeout_s=0.5)
        try:
            assert await client.call(b"PING") == b"PONG"
            server.stop()
            with pytest.raises(RedisConnectionError):
                await client.call(b"PING")
            with pytest.raises(RedisConnectionError, match="cannot connect"):
                await client.call(b"PING")
            server.start()
            assert await client.call(b"PING") == b"PONG"
        finally:
            await client.close()

    run(main())


def test_a_url_that_is_not_redis_is_refused_in_words() -> None:
    with pytest.raises(ValueError, match="not a Redis URL"):
        RespClient("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="database 'x'"):
        RespClient("redis://127.0.0.1:6379/x")
