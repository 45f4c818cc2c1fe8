"""What an Experiment's analysis asks Prometheus, and the thin client that asks it.

flagger's shape (pkg/metrics/providers): a two-method `MetricsSource` the canary logic depends
on, and one implementation over Prometheus' HTTP API, so the decisions are tested with a fake
and this module with the real server (tests/integration/test_analysis.py).

The queries, over the analysis window `[start, end]` (`[Ns]`, evaluated at `end`):
- requests: `sum(increase(rtml_requests_total))`, every outcome: what `minRequests` counts.
  `increase` extrapolates to the window's edges, so it is an estimate (within a scrape).
- p99LatencyMs: `histogram_quantile(0.99)` of the summed bucket increases, in milliseconds;
  one bucket's resolution (linear interpolation inside the bucket the rank falls in).
- errorRate: (error + rejected) / every outcome but rate_limited, a fraction 0..1. A 429 is the
  caller over its budget, not the candidate failing; a rejection (open breaker) is a failure.
- fallbackRate: fallback / the same denominator, a fraction 0..1.
- scoreMeanShift: |mean score of the candidate (or shadow) over the window - mean score of the
  champion since `baseline_start` (the experiment's start; default the window's)|, from the
  score histogram's `_sum` / `_count` (no quantile error). The champion's baseline reaches back
  because at a 100% step it answers nothing in the window itself.
Ratios are taken of sums over pods, never averaged per pod, so a quiet pod weighs what it
served. A missing numerator series counts as zero (`or vector(0)`); no requests at all gives
0/0 = NaN, which `measure` reports as None: inconclusive, not passing.

Labels assumed: `model`, `version`, `variant` (champion, candidate, shadow) and `outcome`
from the runtime (rtml_runtime.metrics); `namespace` and `pod` from the scrape config
(kubernetes_sd role pod relabelling, or a PodMonitor). `rtml_candidate_weight{model,
experiment, revision}` is the weight a pod applies; the runtime drops a revision's series when
it applies the next, so a pod's latest series names the revision in effect.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import urllib3

REQUESTS = "rtml_requests_total"
DURATION_BUCKET = "rtml_request_duration_seconds_bucket"
SCORE_SUM = "rtml_prediction_score_sum"
SCORE_COUNT = "rtml_prediction_score_count"
CANDIDATE_WEIGHT = "rtml_candidate_weight"

# `requests` feeds the minRequests gate; the others are spec.analysis.metrics names.
METRICS = ("requests", "p99LatencyMs", "errorRate", "fallbackRate", "scoreMeanShift")
DEFAULT_TIMEOUT_S = 5.0


class MetricsUnavailable(Exception):  # noqa: N818 - named after spec.analysis.onMetricsUnavailable
    """Prometheus could not answer: the analysis cannot decide, onMetricsUnavailable does."""


@dataclass(frozen=True)
class Window:
    """The candidate's (or shadow's) traffic of one Model over [start, end] (UTC-aware)."""

    namespace: str
    model: str
    variant: Literal["candidate", "shadow"]
    start: datetime
    end: datetime
    # Where the champion's score baseline starts (scoreMeanShift); None: the window's start.
    baseline_start: datetime | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("the analysis window needs timezone-aware start and end")
        if self.end < self.start:
            raise ValueError(f"the analysis window ends ({self.end}) before it starts")
        if self.variant not in ("candidate", "shadow"):
            raise ValueError(f"variant must be candidate or shadow, not {self.variant!r}")

    @property
    def seconds(self) -> int:
        """Whole seconds, rounded down (never reaching back before the weight was applied), at
        least 1 (Prometheus refuses an empty range)."""
        return max(1, int((self.end - self.start).total_seconds()))


def label_value(value: str) -> str:
    """A PromQL double-quoted string literal (Go escapes): a name never breaks the selector."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _selector(metric: str, w: Window, variant: str, extra: str = "") -> str:
    sel = (
        f"namespace={label_value(w.namespace)},model={label_value(w.model)},"
        f"variant={label_value(variant)}{extra}"
    )
    return f"{metric}{{{sel}}}"


def _increase(metric: str, w: Window, variant: str | None = None, extra: str = "") -> str:
    return f"increase({_selector(metric, w, variant or w.variant, extra)}[{w.seconds}s])"


def _summed(metric: str, w: Window, variant: str | None = None, extra: str = "") -> str:
    return f"sum({_increase(metric, w, variant, extra)})"


def _outcome_share(w: Window, outcomes: str) -> str:
    numerator = _summed(REQUESTS, w, extra=f",outcome=~{label_value(outcomes)}")
    denominator = _summed(REQUESTS, w, extra=',outcome!="rate_limited"')
    return f"({numerator} or vector(0)) / {denominator}"


def _baseline(w: Window) -> Window:
    if w.baseline_start is None or w.baseline_start >= w.start:
        return w
    return Window(w.namespace, w.model, w.variant, w.baseline_start, w.end)


def _score_mean(w: Window, variant: str) -> str:
    return f"({_summed(SCORE_SUM, w, variant)} / {_summed(SCORE_COUNT, w, variant)})"


def promql(metric: str, w: Window) -> str:
    """The instant query measuring `metric` over `w` (evaluate it at `w.end`)."""
    if metric == "requests":
        return _summed(REQUESTS, w)
    if metric == "p99LatencyMs":
        return f"1000 * histogram_quantile(0.99, sum by (le) ({_increase(DURATION_BUCKET, w)}))"
    if metric == "errorRate":
        return _outcome_share(w, "error|rejected")
    if metric == "fallbackRate":
        return _outcome_share(w, "fallback")
    if metric == "scoreMeanShift":
        return f"abs({_score_mean(w, w.variant)} - {_score_mean(_baseline(w), 'champion')})"
    raise ValueError(f"unknown analysis metric {metric!r}; known: {', '.join(METRICS)}")


def pods_applying_promql(namespace: str, model: str, revision: str) -> str:
    sel = (
        f"namespace={label_value(namespace)},model={label_value(model)},"
        f"revision={label_value(revision)}"
    )
    # > 0: a pod whose candidate failed to load reports the revision with weight 0 (the API
    # never asks for a weight of 0 while an experiment runs).
    return f"{CANDIDATE_WEIGHT}{{{sel}}} > 0"


class MetricsSource(Protocol):
    def measure(self, metric: str, w: Window) -> float | None:
        """The metric over the window; None when inconclusive (no series, NaN or infinite).
        Raises MetricsUnavailable."""
        ...

    def pods_applying(self, namespace: str, model: str, revision: str) -> set[str]:
        """Names of the pods whose latest `rtml_candidate_weight` reports `revision` with a
        weight above 0 (the plan applied, its candidate loaded).
        Raises MetricsUnavailable."""
        ...


def _finite(value: str) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


class PrometheusSource:
    """`MetricsSource` over Prometheus' `/api/v1/query` (an instant query per call).

    `bearer_token_file` is re-read on every query: a projected service-account token rotates.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        bearer_token: str | None = None,
        bearer_token_file: Path | None = None,
        ca_file: Path | None = None,
    ) -> None:
        if bearer_token and bearer_token_file:
            raise ValueError("give a bearer token or a token file, not both")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = bearer_token
        self._token_file = bearer_token_file
        self._http = urllib3.PoolManager(
            ca_certs=str(ca_file) if ca_file else None,
            timeout=urllib3.Timeout(total=timeout_s),
            retries=False,
        )

    def close(self) -> None:
        self._http.clear()

    def _headers(self) -> dict[str, str]:
        token = self._token
        if self._token_file is not None:
            try:
                token = self._token_file.read_text().strip()
            except OSError as e:
                raise MetricsUnavailable(
                    f"The Prometheus bearer token file {self._token_file} cannot be read: {e}."
                ) from e
        return {"Authorization": f"Bearer {token}"} if token else {}

    def query(self, query: str, at: datetime | None = None) -> dict[str, Any]:
        """The `data` of an instant query's answer ({resultType, result}) at `at` (default:
        Prometheus' now)."""
        fields = {"query": query, "timeout": f"{self.timeout_s:g}s"}
        if at is not None:
            fields["time"] = f"{at.timestamp():.3f}"
        where = f"{self.url}/api/v1/query"
        try:
            resp = self._http.request("GET", where, fields=fields, headers=self._headers())
        except urllib3.exceptions.HTTPError as e:
            raise MetricsUnavailable(f"Prometheus at {self.url} did not answer: {e}.") from e
        try:
            body = json.loads(resp.data)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise MetricsUnavailable(
                f"Prometheus at {self.url} answered HTTP {resp.status} with a body that is not "
                f"its JSON: {resp.data[:200]!r}."
            )
        if not 200 <= resp.status < 300 or body.get("status") != "success":
            raise MetricsUnavailable(
                f"Prometheus at {self.url} refused the query (HTTP {resp.status}, "
                f"{body.get('errorType', 'no error type')}: {body.get('error', 'no message')}): "
                f"{query}"
            )
        data = body.get("data")
        if not isinstance(data, dict) or "resultType" not in data or "result" not in data:
            raise MetricsUnavailable(f"Prometheus at {self.url} answered without data: {body}.")
        return data

    def measure(self, metric: str, w: Window) -> float | None:
        """Each query aggregates to one series; should a Prometheus federation return several
        (say, replicas not deduplicated), the highest finite value decides: every gate is an
        upper bound, so this fails closed. A scalar answer is taken as it is."""
        data = self.query(promql(metric, w), w.end)
        kind, result = data["resultType"], data["result"]
        try:
            if kind == "scalar":
                return _finite(result[1])
            if kind == "vector":
                values = [v for s in result if (v := _finite(s["value"][1])) is not None]
                return max(values) if values else None
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise MetricsUnavailable(
                f"Prometheus at {self.url} answered a {kind} that is not shaped as one: {e!r}."
            ) from e
        raise MetricsUnavailable(
            f"Prometheus at {self.url} answered a {kind} where an instant vector was expected."
        )

    def pods_applying(self, namespace: str, model: str, revision: str) -> set[str]:
        """Series without a `pod` label (a scrape config that does not set it) name no pod."""
        data = self.query(pods_applying_promql(namespace, model, revision))
        if data["resultType"] != "vector":
            raise MetricsUnavailable(
                f"Prometheus at {self.url} answered a {data['resultType']} where an instant "
                "vector was expected."
            )
        return {pod for s in data["result"] if (pod := s.get("metric", {}).get("pod"))}
