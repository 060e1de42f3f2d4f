"""``fnlb`` command line: serve, invoke, runners, certs.

One module per subcommand (``_serve``: the LB, its flags and their
``FNLB_*`` environment variables; ``_client``: invoke and runners; ``_certs``)
and ``_args``, the value types and help formatter they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fnlb.cli._certs import add_certs_parser
from fnlb.cli._client import add_invoke_parser, add_runners_parser
from fnlb.cli._serve import add_serve_parser, config_from_args
from fnlb.errors import ConfigError

__all__ = ["main", "build_parser", "config_from_args"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fnlb", description="fnlb: a gRPC load balancer for function runners.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    add_serve_parser(sub)
    add_invoke_parser(sub)
    add_runners_parser(sub)
    add_certs_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args))
    except ConfigError as e:  # bad flags, environment or files (TLSConfigError too)
        parser.exit(2, f"fnlb: error: {e}\n")
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        parser.exit(1, f"fnlb: error: {e}\n")
