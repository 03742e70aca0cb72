"""``python -m neural_router.serving --router DIR [--host H] [--port P] [--device auto|cuda|cpu] [--config FILE]``:
the same command as ``neural-router serve`` (same options, checks and messages)."""

from __future__ import annotations

import sys

from neural_router.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
