"""Run a command of the ``fnlb`` CLI on uvloop: ``python -m bench._uvloop fnlb serve ...``.

Only for measuring (``python -m bench.datapath --variant uvloop=.@bench._uvloop``);
the LB itself does not depend on uvloop.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from fnlb.cli import main

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main(sys.argv[2:]))
