"""``fnlb invoke`` and ``fnlb runners``: a client of an LB's front door and of its Admin."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from fnlb.cli._args import HelpFormatter, duration, memory_mb, utf8_text
from fnlb.errors import ConfigError

__all__ = ["add_invoke_parser", "add_runners_parser"]


def add_invoke_parser(sub: Any) -> None:
    p = sub.add_parser("invoke", formatter_class=HelpFormatter,
                       help="call a function through an LB",
                       description="Call FN_ID through the LB; the function's body goes to "
                                   "stdout, status and runner to stderr.")
    p.add_argument("fn_id", metavar="FN_ID", type=utf8_text)
    p.add_argument("--lb", default=os.environ.get("FNLB_LB", "127.0.0.1:9090"), type=utf8_text,
                   metavar="HOST:PORT", help="LB front-door address [env FNLB_LB]")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--data", default=None, help="request body (text)")
    body.add_argument("--data-file", default=None, metavar="PATH",
                      help="request body from a file ('-' = stdin)")
    p.add_argument("--app-id", default="", type=utf8_text)
    p.add_argument("--image", default="", type=utf8_text,
                   help="the function's image (runner-stub pulls each image once: "
                        "--image-pull-ms)")
    p.add_argument("--detached", action="store_true", help="return once a runner accepted it")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", type=utf8_text,
                   help="function config, repeatable (runner-stub reads sleep_ms, status, ...)")
    p.add_argument("--memory-mb", type=memory_mb, default=0)
    p.add_argument("--timeout", type=duration, default=None, metavar="DUR",
                   help="client deadline for the whole call")
    p.add_argument("--tls-ca", default=None, help="CA of the LB's certificate (front-door TLS)")
    p.add_argument("--tls-cert", default=None, help="client certificate (front-door mTLS)")
    p.add_argument("--tls-key", default=None, help="key of --tls-cert")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="ask for the call's trace (metadata fnlb-trace: 1) and print it to "
                        "stderr: the runners tried (fnlb-attempts) and where the time went "
                        "(fnlb-phases), also when the call fails")
    p.set_defaults(func=_cmd_invoke)


def _cmd_invoke(args: argparse.Namespace) -> int:
    from fnlb.client import invoke

    if args.data_file == "-":
        data = sys.stdin.buffer.read()
    elif args.data_file:
        data = Path(args.data_file).read_bytes()
    else:
        data = (args.data or "").encode()
    config: dict[str, str] = {}
    for item in args.config:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--config: expected KEY=VALUE, got {item!r}")
        config[key] = value
    return asyncio.run(invoke(args, data, config))


def add_runners_parser(sub: Any) -> None:
    p = sub.add_parser("runners", formatter_class=HelpFormatter, help="print an LB's runner pool",
                       description="Print the runner pool of the LB as a table, through its "
                                   "Admin service (fnlb serve --admin-listen); --add, "
                                   "--remove and --drain change it first.")
    p.add_argument("--lb", default=os.environ.get("FNLB_ADMIN_LB", "127.0.0.1:9092"),
                   metavar="HOST:PORT", type=utf8_text,
                   help="LB admin address (its --admin-listen) [env FNLB_ADMIN_LB]")
    change = p.add_mutually_exclusive_group()
    change.add_argument("--add", metavar="HOST:PORT", type=utf8_text,
                        help="add a runner (Admin/AddRunner)")
    change.add_argument("--remove", metavar="HOST:PORT", type=utf8_text,
                        help="remove a runner added with --add (Admin/RemoveRunner)")
    change.add_argument("--drain", metavar="HOST:PORT", type=utf8_text,
                        help="stop placing on a runner and tell it to drain (Admin/DrainRunner)")
    p.add_argument("--tls-ca", default=None, help="CA of the LB's certificate (front-door TLS)")
    p.add_argument("--tls-cert", default=None, help="client certificate (front-door mTLS)")
    p.add_argument("--tls-key", default=None, help="key of --tls-cert")
    p.set_defaults(func=_cmd_runners)


def _cmd_runners(args: argparse.Namespace) -> int:
    from fnlb.client import list_runners

    return asyncio.run(list_runners(args))
