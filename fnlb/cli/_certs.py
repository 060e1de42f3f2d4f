"""``fnlb certs init|issue``: a development CA and certificates for mTLS."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fnlb.cli._args import HelpFormatter, positive_int, utf8_text

__all__ = ["add_certs_parser"]


def add_certs_parser(sub: Any) -> None:
    p = sub.add_parser("certs", help="make a dev CA and certificates for mTLS",
                       description="Development PKI: a CA and certificates usable as both "
                                   "server and client certificates (EC P-256).")
    csub = p.add_subparsers(dest="certs_cmd", required=True, metavar="{init,issue}")
    i = csub.add_parser("init", formatter_class=HelpFormatter,
                        help="create a CA: DIR/ca.crt, ca.key")
    i.add_argument("--out", required=True, metavar="DIR")
    i.add_argument("--name", default="fnlb-dev-ca", type=utf8_text, help="CA common name")
    i.add_argument("--days", type=positive_int, default=3650)
    i.add_argument("--force", action="store_true", help="overwrite existing files")
    i.set_defaults(func=_cmd_certs_init)
    s = csub.add_parser("issue", formatter_class=HelpFormatter,
                        help="issue DIR2/NAME.crt, NAME.key signed by the CA in DIR")
    s.add_argument("--ca", required=True, metavar="DIR", help="directory with ca.crt and ca.key")
    s.add_argument("--name", required=True, help="certificate name (CN and file name)")
    s.add_argument("--san", action="append", required=True, metavar="HOST_OR_IP",
                   help="subject alternative name, repeatable (DNS name or IP)")
    s.add_argument("--out", required=True, metavar="DIR2")
    s.add_argument("--days", type=positive_int, default=825)
    s.add_argument("--force", action="store_true", help="overwrite existing files")
    s.set_defaults(func=_cmd_certs_issue)


def _cmd_certs_init(args: argparse.Namespace) -> int:
    from fnlb.tls import init_ca

    crt, key = init_ca(Path(args.out), name=args.name, days=args.days, force=args.force)
    print(f"wrote {crt} and {key}")
    return 0


def _cmd_certs_issue(args: argparse.Namespace) -> int:
    from fnlb.tls import issue_cert

    crt, key = issue_cert(Path(args.ca), args.name, args.san, Path(args.out),
                          days=args.days, force=args.force)
    print(f"wrote {crt} and {key}")
    return 0
