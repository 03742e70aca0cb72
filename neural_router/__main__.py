"""``python -m neural_router ...``: the ``neural-router`` command (same arguments, checks and exit codes)."""

from neural_router.cli import main

raise SystemExit(main())
