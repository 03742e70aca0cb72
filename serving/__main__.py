"""``python -m serving --router DIR [--host H] [--port P] [--device auto|cuda|cpu] [--config FILE]``."""

from __future__ import annotations

import argparse

from serving.app import serve


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m serving", description="Serve an exported router.")
    p.add_argument("--router", required=True, help="exported router folder (router.onnx, ...)")
    p.add_argument("--host", default=None, help="bind address (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default from config: 8000)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default=None)
    p.add_argument("--config", default=None, help="serve config YAML (see configs/serve.yaml)")
    a = p.parse_args(argv)
    serve(a.router, host=a.host, port=a.port, device=a.device, config_file=a.config)


if __name__ == "__main__":
    main()
