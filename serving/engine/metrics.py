"""The service's Prometheus metrics, in a registry of its own per app (never the process-global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    """Counters, histograms and gauges of the router service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("router_http_requests_total", "HTTP requests by endpoint and status.",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("router_http_request_duration_seconds",
                                 "Time to the response headers, by endpoint.", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("router_batch_size", "Prompts per inference batch.",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("router_batch_duration_seconds",
                                       "Tokenisation + inference time per batch.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("router_queue_depth", "Prompts waiting for a batch.", registry=r)
        self.decisions = Counter("router_decisions_total", "Routing decisions by chosen model.",
                                 ["model"], registry=r)
        self.rejected = Counter("router_rejected_total", "Requests refused before inference.",
                                ["reason"], registry=r)
        self.proxy_attempts = Counter("router_proxy_attempts_total",
                                      "Backend calls of /v1/chat/completions by model and outcome.",
                                      ["model", "outcome"], registry=r)

        self.exploration = Counter(
            "router_exploration_decisions_total",
            "Routing decisions by exploration policy and outcome: greedy (served the policy's "
            "choice), explored (served another model), constrained (soft constraints switched "
            "exploration off).", ["policy", "outcome"], registry=r)
        self.decisions_logged = Counter("router_decisions_logged_total",
                                        "Decisions written to the feedback store, by status.",
                                        ["status"], registry=r)
        self.feedback = Counter("router_feedback_received_total",
                                "Outcomes received, by source (api, scorer) and status.",
                                ["source", "status"], registry=r)
        self.reloads = Counter("router_admin_actions_total", "Admin reloads and rollbacks by status.",
                               ["action", "status"], registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
