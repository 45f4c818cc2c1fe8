"""Add synthetic card transactions to the example's input stream.

    python examples/stream/produce.py [--redis-url URL] [--stream NAME] [--events N]
                                      [--cards N] [--span SECONDS] [--seed S]

Each entry has the fields `rtml stream` reads by default: `event_id` (unique), `card_id` (the
Model's entity key), `event_time` (epoch seconds, spread over the --span seconds up to now, in
order) and `amount`. Same --seed, same events (ids and amounts; times end at the current second).
"""

from __future__ import annotations

import argparse
import random
import time

import redis


def events(n: int, cards: int, span_s: float, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)  # noqa: S311 - synthetic events, the same for the same seed
    end = float(int(time.time()))
    times = sorted(end - rng.uniform(0, span_s) for _ in range(n))
    return [
        {
            "event_id": f"txn-{seed}-{i:07d}",
            "card_id": f"card-{rng.randrange(cards):04d}",
            "event_time": f"{t:.3f}",
            "amount": f"{rng.lognormvariate(3.5, 0.8):.2f}",
        }
        for i, t in enumerate(times)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--stream", default="rtml:card-stream:events")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--cards", type=int, default=50)
    parser.add_argument("--span", type=float, default=3600.0, help="seconds of event time")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis_url)
    pipe = client.pipeline(transaction=False)
    for fields in events(args.events, args.cards, args.span, args.seed):
        pipe.xadd(args.stream, fields)  # type: ignore[arg-type]
    pipe.execute()
    print(f"added {args.events} events for {args.cards} cards to {args.stream}")


if __name__ == "__main__":
    main()
