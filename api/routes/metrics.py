"""``GET /metrics``: the job store's state in Prometheus' text format (``prometheus-client``).

Each scrape reads the store (:meth:`~lrtune.jobs.JobStore.stats`, by the database's clock)
into a fresh registry, so every API replica reports the same numbers:

- ``lrtune_jobs{state}``: jobs in each state (every state listed, 0 included);
- ``lrtune_units_finished_total{kind}``: search trials (``kind="trial"``) and confirmation
  runs (``kind="confirmation"``) finished, summed over the stored jobs' progress (a counter:
  deleting a job lowers it, which Prometheus reads as a reset);
- ``lrtune_trials_finished_per_minute``: the increase of the trials' counter per minute over
  the last minute to five minutes of this process's scrapes (0 until two scrapes 10 s apart);
  in PromQL, ``rate(lrtune_units_finished_total{kind="trial"}[5m]) * 60`` is the same figure
  over any window;
- ``lrtune_queue_age_seconds``: how long the oldest queued job has waited (0: none queued);
- ``lrtune_workers_holding_lease``: workers holding a job's exclusive phase now;
- ``lrtune_workers_live``: workers whose heartbeat is recent (``lrtune workers`` lists them).

Like the other reads, it needs the token when ``LRTUNE_API_TOKEN_FOR_READS`` is on (Prometheus'
``authorization`` scrape setting sends it).

Example:
    >>> [route.path for route in router.routes]
    ['/metrics']
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lrtune.api.deps import ReadAuth, StoreDep
from lrtune.api.routes._docs import error_responses
from lrtune.jobs import JobStats, JobStore

router = APIRouter(tags=["health"])

RATE_WINDOW_S = (60.0, 300.0)
"""The per-minute rate uses the oldest kept scrape at least 60 s old, none older than 300 s."""
MIN_RATE_SPAN_S = 10.0
"""Below this span between two scrapes, the per-minute rate is reported as 0."""


@dataclass
class TrialRate:
    """Trials finished per minute, from the counter's values at this process's scrapes."""

    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=512))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, total: int, now: float | None = None) -> float:
        """Record ``total`` at ``now`` (monotonic seconds); return the per-minute rate.

        >>> rate = TrialRate()
        >>> rate.observe(10, now=0.0), rate.observe(40, now=30.0), rate.observe(70, now=60.0)
        (0.0, 60.0, 60.0)
        """
        now = time.monotonic() if now is None else now
        with self.lock:
            while self.samples and now - self.samples[0][0] > RATE_WINDOW_S[1]:
                self.samples.popleft()
            base = self.samples[0] if self.samples else None
            for sample in self.samples:  # the newest sample at least a minute old
                if now - sample[0] >= RATE_WINDOW_S[0]:
                    base = sample
            self.samples.append((now, total))
        if base is None or now - base[0] < MIN_RATE_SPAN_S:
            return 0.0
        return max(0.0, (total - base[1]) * 60.0 / (now - base[0]))


class _StoreCollector(Collector):
    def __init__(self, stats: JobStats, trials_per_minute: float) -> None:
        self.stats = stats
        self.trials_per_minute = trials_per_minute

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        jobs = GaugeMetricFamily("lrtune_jobs", "Jobs in each state", labels=["state"])
        for state, count in stats.by_state.items():
            jobs.add_metric([state], count)
        yield jobs
        units = CounterMetricFamily(
            "lrtune_units_finished",
            "Search trials and confirmation runs finished, over the stored jobs",
            labels=["kind"],
        )
        units.add_metric(["trial"], stats.trials_done)
        units.add_metric(["confirmation"], stats.confirmations_done)
        yield units
        yield GaugeMetricFamily(
            "lrtune_trials_finished_per_minute",
            "Search trials finished per minute over this API process's recent scrapes",
            value=self.trials_per_minute,
        )
        yield GaugeMetricFamily(
            "lrtune_queue_age_seconds",
            "Seconds the oldest queued job has waited (0 when none is queued)",
            value=stats.queue_age_s,
        )
        yield GaugeMetricFamily(
            "lrtune_workers_holding_lease",
            "Workers holding a job's exclusive phase (range test or final write) now",
            value=stats.lease_holders,
        )
        yield GaugeMetricFamily(
            "lrtune_workers_live", "Workers whose heartbeat is recent", value=stats.live_workers
        )


def render(store: JobStore, rate: TrialRate) -> bytes:
    """The metrics' text exposition for ``store``, updating ``rate``."""
    stats = store.stats()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StoreCollector(stats, rate.observe(stats.trials_done)))
    return generate_latest(registry)


_rates_lock = threading.Lock()


def _rate_of(request: Request) -> TrialRate:
    with _rates_lock:
        rate = getattr(request.app.state, "trial_rate", None)
        if rate is None:
            rate = request.app.state.trial_rate = TrialRate()
    return rate


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition format",
        },
        **error_responses(401, 422, 503),
    },
)
def metrics(request: Request, store: StoreDep, _: ReadAuth) -> Response:
    """Jobs by state, units finished, trials per minute, queue age, lease holders, workers."""
    return Response(render(store, _rate_of(request)), media_type=CONTENT_TYPE_LATEST)
