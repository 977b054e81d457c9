"""Prometheus metrics. Multiprocess-safe: `gih serve --workers N` points PROMETHEUS_MULTIPROC_DIR
at a shared directory and /metrics aggregates every process."""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 800)

http_requests = Counter("gih_http_requests_total", "HTTP requests answered",
                        ["method", "route", "status"])
http_latency = Histogram("gih_http_request_duration_seconds", "HTTP request latency",
                         ["method", "route"], buckets=LATENCY_BUCKETS)
generations = Counter("gih_generations_total",
                      "Generations by model, status (accepted, succeeded, failed) and mode",
                      ["model", "status", "mode"])
credits_charged = Counter("gih_credits_charged_total", "Credits charged for generations")
credits_refunded = Counter("gih_credits_refunded_total", "Credits refunded for generations")
provider_latency = Histogram("gih_provider_request_duration_seconds",
                             "Upstream image provider call latency, retries included",
                             ["provider", "outcome"], buckets=LATENCY_BUCKETS)
provider_errors = Counter("gih_provider_errors_total", "Upstream provider failures",
                          ["provider", "code"])
sweeps = Counter("gih_sweeps_total", "Runs of the stuck-generation sweep")
sweep_actions = Counter("gih_sweep_generations_total",
                        "Generations the sweep re-enqueued or failed", ["action"])


def mode_of(is_async: bool) -> str:
    return "async" if is_async else "sync"


def render(extra_lines: list[str] | None = None) -> tuple[bytes, str]:
    """The exposition text for this process, or for all processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        body = generate_latest(REGISTRY)
    if extra_lines:
        body += ("\n".join(extra_lines) + "\n").encode()
    return body, CONTENT_TYPE_LATEST
