"""What one request's rules cost in each Python CEL library (docs/decisions.md).

    python benchmarks/cel_cost.py

Three fraud rules, compiled once, evaluated against one request's values and features: the
per-request cost of building the variables and evaluating all three, best of 5 repeats. Only
cel-expr-python is a dependency of rtml; the other two are measured when installed
(`pip install cel-python common-expression-language`).

Then the fraud detector's own rules (examples/fraud/detector.yaml) over its 3 request values
and 27 features, as the runtime's RuleSet evaluates them: with every value in the variables,
and with only the keys the rules name (what RuleSet does since the assessment's profile).
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

DETECTOR = Path(__file__).resolve().parent.parent / "examples" / "fraud" / "detector.yaml"

RULES = [
    "request.amount > 10000.0 && features.txn_count_1h > 20.0",
    "features.amount_mean_24h > 0.0 && request.amount > 8.0 * features.amount_mean_24h",
    "request.merchant_risk >= 0.9 || features.chargeback_count_90d > 2.0",
]
REQUEST = {"card_id": "c1", "amount": 12000.0, "merchant_risk": 0.3}
FEATURES = {"txn_count_1h": 3.0, "amount_mean_24h": 100.0, "chargeback_count_90d": 0.0}
EXPECTED = [False, True, False]


def per_call_us(run: Callable[[], Any], number: int) -> float:
    assert [bool(v) for v in run()] == EXPECTED
    return min(timeit.repeat(run, number=number, repeat=5)) / number * 1e6


def google() -> Callable[[], list[Any]]:
    from rtml.api.expressions import activation, compile_expression, evaluate

    compiled = [compile_expression(r) for r in RULES]

    def run() -> list[Any]:
        variables = activation(REQUEST, FEATURES)  # once per request, as the runtime does
        return [evaluate(c, variables) for c in compiled]

    return run


def rust() -> Callable[[], list[Any]]:
    import cel

    programs = [cel.compile(r) for r in RULES]

    def run() -> list[Any]:
        context = {"request": REQUEST, "features": FEATURES}
        return [p.execute(context) for p in programs]

    return run


def pure_python() -> Callable[[], list[Any]]:
    import celpy

    env = celpy.Environment()
    programs = [env.program(env.compile(r)) for r in RULES]

    def run() -> list[Any]:
        act = {"request": celpy.json_to_cel(REQUEST), "features": celpy.json_to_cel(FEATURES)}
        return [p.evaluate(act) for p in programs]

    return run


def detector_cases() -> list[tuple[str, Callable[[], Any]]]:
    """The detector's rules over its whole request and feature maps, and over the named keys."""
    from rtml.api.expressions import activation, compile_expression, evaluate, only, referenced_keys

    docs = {d["kind"]: d for d in yaml.safe_load_all(DETECTOR.read_text())}
    rules = [r["expression"] for r in docs["Model"]["spec"]["rules"]]
    features = {
        f["name"]: float(f.get("default", 0.0)) + 1.0
        for f in docs["FeatureView"]["spec"]["features"]
    }
    request = {"card_id": "card_00042", "amount": 129.5, "merchant_risk": 0.3, "hour_of_day": 23.0}
    compiled = [compile_expression(r) for r in rules]
    keys = referenced_keys(rules)

    def whole() -> list[Any]:
        variables = activation(dict(request), dict(features))
        return [evaluate(c, variables) for c in compiled]

    def named() -> list[Any]:
        variables = activation(only(request, keys["request"]), only(features, keys["features"]))
        return [evaluate(c, variables) for c in compiled]

    assert whole() == named()
    n = len(request) + len(features)
    m = len(keys["request"] or request) + len(keys["features"] or features)
    return [(f"every value ({n})", whole), (f"named keys only ({m})", named)]


def main() -> None:
    cases = [
        ("cel-expr-python", google, 20_000),
        ("common-expression-language", rust, 20_000),
        ("cel-python", pure_python, 500),
    ]
    for dist, build, number in cases:
        try:
            run = build()
        except ImportError:
            print(f"{dist}: not installed")
            continue
        print(f"{dist} {version(dist)}: {per_call_us(run, number):.1f} µs per request (3 rules)")
    print("the fraud detector's rules in cel-expr-python:")
    for name, run in detector_cases():
        run()
        took = min(timeit.repeat(run, number=20_000, repeat=5)) / 20_000 * 1e6
        print(f"  {name}: {took:.1f} µs per request")


if __name__ == "__main__":
    main()
