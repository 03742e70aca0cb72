"""The ASGI guards: the bearer key (api_key) and the body size limit (max_body_bytes)."""

from __future__ import annotations

from collections.abc import Iterator

from tests.serving.helpers import make_client


def test_oversized_body_is_413() -> None:
    with make_client(max_body_bytes=4096) as c:
        r = c.post("/v1/route", json={"prompt": "x" * 5000})
        assert r.status_code == 413 and "4096" in r.json()["detail"]
        assert c.post("/v1/route", json={"prompt": "fits"}).status_code == 200


def test_body_without_content_length_is_counted_while_read() -> None:
    with make_client(max_body_bytes=4096) as c:
        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'
        r = c.post("/v1/route", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/v1/route", json={"prompt": "fits"}).status_code == 200


def test_api_key_required_except_health() -> None:
    with make_client(api_key="s3cret") as c:
        assert c.post("/v1/route", json={"prompt": "a"}).status_code == 401
        r = c.post("/v1/route", json={"prompt": "a"}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/metrics").status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post("/v1/route", json={"prompt": "a"}, headers=ok).status_code == 200
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        schema = c.get("/openapi.json", headers=ok).json()
        assert "HTTPBearer" in schema["components"]["securitySchemes"]
        assert schema["paths"]["/v1/route"]["post"]["security"] == [{"HTTPBearer": []}]
        assert "security" not in schema["paths"]["/healthz"]["get"]
