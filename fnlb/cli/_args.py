"""argparse helpers shared by the subcommands: value types that name the bad
value, and the help formatter (defaults shown, descriptions kept as written)."""

from __future__ import annotations

import argparse
import math

from fnlb.timefmt import parse_duration

__all__ = [
    "HelpFormatter",
    "app_weights",
    "duration",
    "memory_mb",
    "non_negative_int",
    "number",
    "on_off",
    "percent",
    "positive_int",
    "utf8_text",
]


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def utf8_text(text: str) -> str:
    """Text that goes on the wire or into a certificate: it must encode as UTF-8.

    Bytes that are not UTF-8 reach Python as lone surrogates, which protobuf,
    grpc and X.509 all refuse; say so here, naming the flag.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"not valid UTF-8: {text!r}") from None
    return text


def memory_mb(text: str) -> int:
    """What InvokeRequest.memory_mb (uint64) can carry; the LB checks its own limit."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}" if value < 0
                                         else f"too large, got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be 0..100, got {text}")
    return value


def app_weights(text: str) -> dict[str, float]:
    """``APP=WEIGHT,APP=WEIGHT``: an app's share of the queue's turns (default 1)."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        app, sep, value = (x.strip() for x in item.partition("="))
        try:
            weight = float(value)
        except ValueError:
            weight = 0.0
        if not (sep and app and 0 < weight < math.inf):
            raise argparse.ArgumentTypeError(f"expected APP=WEIGHT with WEIGHT > 0, got {item!r}")
        weights[app] = weight
    return weights


def on_off(text: str) -> bool:
    if text in ("on", "off"):
        return text == "on"
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass
