"""argparse types shared by the command lines: a bad number is a usage error naming the flag, not a
traceback from deep inside torch."""

from __future__ import annotations

import argparse


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return x


def threads_or_auto(value: str) -> int | str:
    """`--threads` of the serving commands: "auto" as it is, else a positive integer
    (`emova.serve.api.server_threads` says what each means)."""
    from emova.serve.api import server_threads

    if value == "auto":
        return value
    try:
        return server_threads(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


__all__ = ["positive_float", "positive_int", "threads_or_auto"]
