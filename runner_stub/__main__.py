"""``python -m runner_stub``."""

from runner_stub.cli import main

raise SystemExit(main())
