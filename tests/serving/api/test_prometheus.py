"""Metrics: each app has its own registry; the middleware counts every request by endpoint."""

from __future__ import annotations

from tests.serving.helpers import make_client


def test_metrics_are_per_app_and_count_requests() -> None:
    with make_client() as a, make_client() as b:
        for _ in range(3):
            assert a.post("/v1/route", json={"prompt": "q", "preferences": {"quality_weight": 1}}).status_code == 200
        a.post("/v1/route", json={"prompt": ""})
        a.get("/no/such/path")
        text = a.get("/metrics").text
        assert 'router_http_requests_total{endpoint="/v1/route",method="POST",status="200"} 3.0' in text
        assert 'router_http_requests_total{endpoint="/v1/route",method="POST",status="422"} 1.0' in text
        assert 'router_http_requests_total{endpoint="other",method="GET",status="404"} 1.0' in text
        assert 'router_decisions_total{model="big"} 3.0' in text
        assert "router_batch_size_count" in text and "router_queue_depth 0.0" in text
        assert "router_http_request_duration_seconds_bucket" in text
        other = b.get("/metrics").text
        assert 'router_decisions_total{model="big"}' not in other
