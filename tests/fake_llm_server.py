"""A fake OpenAI-compatible LLM server for the proxy tests (stdlib only, real HTTP on loopback).

    python tests/fake_llm_server.py [--host 127.0.0.1] [--port 0] [--fail-models a,b]
        [--fail-status 503] [--hang-models c] [--hang-s 30] [--require-key KEY]

``POST /v1/chat/completions`` answers ``"echo[<model>]: <last user text>"`` as JSON, or as an SSE
stream of three chunks plus ``[DONE]`` when ``stream`` is true. Models in ``--fail-models`` get
``--fail-status``; models in ``--hang-models`` get no answer for ``--hang-s`` seconds; with
``--require-key`` a wrong bearer key gets 401. ``GET /requests`` lists what was received
(model, stream, authorization). On start it prints ``LISTENING <port>`` on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeLLM(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], args: argparse.Namespace) -> None:
        super().__init__(addr, Handler)
        self.fail_models = {m for m in args.fail_models.split(",") if m}
        self.hang_models = {m for m in args.hang_models.split(",") if m}
        self.fail_status: int = args.fail_status
        self.hang_s: float = args.hang_s
        self.require_key: str | None = args.require_key
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server: FakeLLM
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/requests":
            with self.server.lock:
                self._json(200, list(self.server.log))
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._json(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
            return
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        model = str(body.get("model", ""))
        auth = self.headers.get("authorization")
        with self.server.lock:
            self.server.log.append({"model": model, "stream": bool(body.get("stream")),
                                    "authorization": auth, "body": body})
        if self.server.require_key and auth != f"Bearer {self.server.require_key}":
            self._json(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
            return
        if model in self.server.hang_models:
            time.sleep(self.server.hang_s)
            self._json(200, {"error": "too late"})
            return
        if model in self.server.fail_models:
            self._json(self.server.fail_status, {"error": {"message": f"{model} is down", "type": "server_error"}})
            return
        if not body.get("messages"):
            self._json(400, {"error": {"message": "messages is required", "type": "invalid_request_error"}})
            return
        last = body["messages"][-1].get("content")
        text = f"echo[{model}]: {last if isinstance(last, str) else json.dumps(last)}"
        if body.get("stream"):
            self._stream(model, text)
        else:
            self._json(200, {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                             "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                                          "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}})

    def _stream(self, model: str, text: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        third = max(1, len(text) // 3)
        pieces = [text[:third], text[third:2 * third], text[2 * third:]]
        for i, piece in enumerate(pieces):
            chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                     "choices": [{"index": 0, "delta": {"content": piece},
                                  "finish_reason": "stop" if i == len(pieces) - 1 else None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.01)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port (printed on stdout)")
    p.add_argument("--fail-models", default="", help="comma-separated model names that get --fail-status")
    p.add_argument("--fail-status", type=int, default=503)
    p.add_argument("--hang-models", default="", help="comma-separated model names that never answer in time")
    p.add_argument("--hang-s", type=float, default=30.0)
    p.add_argument("--require-key", default=None, help="bearer key every request must carry")
    args = p.parse_args(argv)
    server = FakeLLM((args.host, args.port), args)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
