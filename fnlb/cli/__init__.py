"""``fnlb`` command line: serve, invoke, runners, certs."""

from fnlb.cli._serve import build_parser, config_from_args, main

__all__ = ["main", "build_parser", "config_from_args"]
