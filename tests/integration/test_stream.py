"""`rtml stream` as a real process on a real redis-server: killed mid-batch and replaced by
another consumer, it still answers every event (at least once; exactly once after
de-duplication by event id), and the window aggregates in the online store equal a reference
computed here, in plain Python, over the same events."""

from __future__ import annotations

import asyncio
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from rtml.api import FeatureView
from rtml.contract import FEAST_ENTITY_KEY_VERSION, FEAST_PROJECT
from rtml_runtime.features import FeastRedisReader
from tests.runtime_proc import LOGS, REPO, RedisServer, free_port, rtml_env

pytestmark = [pytest.mark.runtime, pytest.mark.redis]
EXAMPLE = REPO / "examples" / "stream"
EVENTS = 2000
CARDS = 50
SPAN_S = 3600.0
INPUT, OUTPUT, GROUP = "rtml:card-stream:events", "rtml:card-stream:results", "rtml-card-stream"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's manifest beside its built model, in a folder of this test's own."""
    where = tmp_path_factory.mktemp("stream")
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "build.py"),
            "--out",
            str(where / "build"),
            "--rows",
            "4000",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    shutil.copy(EXAMPLE / "model.yaml", where / "model.yaml")
    return where / "model.yaml"


@pytest.fixture
def redis_db(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def produce(client: redis.Redis, seed: int = 13) -> list[dict[str, str]]:
    """EVENTS events over CARDS cards with times over the last SPAN_S seconds, added out of
    time order (so windows must follow event time, not arrival)."""
    rng = random.Random(seed)  # noqa: S311 - test data
    end = time.time()
    events = []
    for i in range(EVENTS):
        fields = {
            "event_id": f"e{i:05d}",
            "card_id": f"card-{rng.randrange(CARDS):03d}",
            "event_time": f"{end - rng.uniform(0, SPAN_S):.3f}",
            "amount": f"{rng.lognormvariate(3.5, 0.8):.2f}",
        }
        if i % 10 == 0:
            del fields["amount"]  # counted as an event, not as a value
        events.append(fields)
    pipe = client.pipeline(transaction=False)
    for fields in events:
        pipe.xadd(INPUT, fields)  # type: ignore[arg-type]
    pipe.execute()
    return events


class StreamProcess:
    def __init__(self, manifest: Path, url: str, consumer: str, *extra: str) -> None:
        self.metrics_port = free_port()
        LOGS.mkdir(exist_ok=True)
        self.log = LOGS / f"stream-{consumer}-{self.metrics_port}.log"
        argv = [sys.executable, "-m", "rtml.cli", "stream", str(manifest), "--redis-url", url,
                "--consumer", consumer, "--metrics-port", str(self.metrics_port),
                *extra]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env=rtml_env(),
            start_new_session=True,
        )

    def metric(self, name: str) -> float | None:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.proc.wait(30)


def results(client: redis.Redis) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in client.xrange(OUTPUT, "-", "+")
    ]


def wait_for(what: str, check: Any, timeout_s: float = 90.0, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every_s)
    pytest.fail(f"{what} did not happen within {timeout_s} s")


def reference(view: FeatureView, events: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """Each card's aggregates as of its latest event, from the window definition alone: a
    window of w seconds over buckets of g seconds holds the events whose bucket floor(t/g) is
    one of the w/g buckets ending with the bucket of the card's latest event."""
    by_card: dict[str, list[dict[str, str]]] = defaultdict(list)
    for e in events:
        by_card[e["card_id"]].append(e)
    out = {}
    for card, mine in by_card.items():
        latest = max(float(e["event_time"]) for e in mine)
        values: dict[str, float] = {}
        for a in view.spec.aggregations:
            w = a.window_s
            g = 1 if w <= 300 else 60 if w <= 86400 else 3600
            last = math.floor(latest / g)
            inside = [e for e in mine if last - w // g < math.floor(float(e["event_time"]) / g)]
            numbers = [float(e[a.field]) for e in inside if a.field and a.field in e]
            values[a.name] = {
                "count": len(inside),
                "sum": sum(numbers),
                "avg": sum(numbers) / len(numbers) if numbers else 0.0,
                "max": max(numbers, default=0.0),
            }[a.function]
        out[card] = values
    return out


async def online_values(view: FeatureView, url: str, cards: list[str]) -> dict[str, Any]:
    """What the runtime's own Redis reader reads for each card."""
    reader = FeastRedisReader(view, url, FEAST_PROJECT, FEAST_ENTITY_KEY_VERSION)
    try:
        return {card: await reader.read(card) for card in cards}
    finally:
        await reader.close()


@pytest.mark.parametrize(
    ("restarted_as", "claim"),
    [
        # Another consumer: only XAUTOCLAIM (entries idle 300 ms) can take a's entries over.
        ("b", ("--claim-min-idle-ms", "300", "--claim-every", "0.2")),
        # The same name (a pod restarted): it re-reads its own pending entries on start; the
        # claim is put out of reach, so that path alone must recover them.
        ("a", ("--claim-min-idle-ms", "3600000", "--claim-every", "3600")),
    ],
    ids=["another-consumer-reclaims", "same-consumer-rereads"],
)
def test_killed_mid_batch_every_event_is_answered_once_and_windows_are_exact(
    manifest: Path, redis_db: RedisServer, restarted_as: str, claim: tuple[str, ...]
) -> None:
    client = redis.Redis.from_url(redis_db.url)
    events = produce(client)
    ids = {e["event_id"] for e in events}

    # A small batch and in-flight bound, so the kill lands with entries read and not acked.
    first = StreamProcess(
        manifest, redis_db.url, "a", "--batch-size", "16", "--max-in-flight", "32"
    )
    try:
        wait_for("the first results", lambda: client.xlen(OUTPUT) >= 300, every_s=0.005)
        first.signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        if first.proc.poll() is None:
            first.signal(signal.SIGKILL)
    published = client.xlen(OUTPUT)
    pending = client.xpending(INPUT, GROUP)["pending"]
    assert 0 < published < EVENTS, f"the kill did not land mid-stream ({published} results)"
    assert pending > 0, "the kill left nothing pending: it was not mid-batch"

    second = StreamProcess(manifest, redis_db.url, restarted_as, *claim)
    try:
        done = lambda: {r["event_id"] for r in results(client)} >= ids  # noqa: E731
        wait_for("an answer for every event", done)
        wait_for("no entry pending", lambda: client.xpending(INPUT, GROUP)["pending"] == 0)
        wait_for("the lag metric at 0", lambda: second.metric("rtml_stream_consumer_lag") == 0)
        assert second.metric("rtml_stream_pending") is not None
        reclaimed = second.metric("rtml_stream_reclaimed_total")
        assert reclaimed is not None
        assert reclaimed >= 1
    finally:
        assert second.stop() == 0

    out = results(client)
    # An event without the Model's request feature is answered with an error result (and
    # acknowledged: it would fail again), after its windows counted it.
    errors = [r for r in out if "error" in r]
    assert {r["event_id"] for r in errors} == {e["event_id"] for e in events if "amount" not in e}
    assert {(r["error"], r["field"]) for r in errors} == {("invalid_input", "features.amount")}
    seen: dict[str, dict[str, str]] = {}
    for r in out:
        seen.setdefault(r["event_id"], r)
    assert set(seen) == ids  # nothing lost, nothing made up
    assert len(out) >= EVENTS  # at least once (a result published twice is allowed)
    scored = [r for r in out if "error" not in r]
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in scored)
    assert {r["version"] for r in scored} == {"v1"}
    by_id = {e["event_id"]: e for e in events}
    assert all(r["entity"] == by_id[r["event_id"]]["card_id"] for r in scored)

    docs = list(yaml.safe_load_all(manifest.read_text()))
    view = FeatureView.model_validate(next(d for d in docs if d["kind"] == "FeatureView"))
    expected = reference(view, events)
    stored = asyncio.run(online_values(view, redis_db.url, sorted(expected)))
    assert sorted(expected) == sorted(c for c, v in stored.items() if v is not None)
    for card, want in expected.items():
        got = stored[card]
        for name, value in want.items():
            if isinstance(value, int):
                assert got[name] == value, f"{card} {name}"
            else:  # Feast keeps FLOAT features as float32
                assert math.isclose(got[name], value, rel_tol=1e-6, abs_tol=1e-3), (
                    f"{card} {name}: stored {got[name]}, expected {value}"
                )
    # The 1h windows hold nearly every event (the times span an hour, the buckets a minute).
    assert sum(int(want["txn_count_1h"]) for want in expected.values()) > 0.9 * EVENTS
