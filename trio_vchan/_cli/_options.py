"""Argument types and the options that several subcommands share."""

from __future__ import annotations

import argparse
import math
from typing import Final

from .._backend import check_domid
from .._domains import Domain, check_domain
from .._handshake import DEFAULT_HANDSHAKE_TIMEOUT, vchan_path
from .._layout import check_ring_size

DEFAULT_BUFFER_SIZE: Final = 65536


def domid(text: str) -> int:
    """Parse a domain id (``0``..``32751``) for argparse.

    Raises:
        argparse.ArgumentTypeError: not a domain id.
    """
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"a domain id is a decimal number, not {text!r}")
    try:
        return check_domid(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def domain(text: str) -> Domain:
    """Parse a domain for argparse: an id (digits), else a name to look up when run.

    Raises:
        argparse.ArgumentTypeError: an id out of range, or an impossible name.
    """
    if text.isascii() and text.isdigit():
        return domid(text)
    try:
        return check_domain(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a domain is an id (a decimal number) or a name without '/', not {text!r}"
        ) from None


def domains(text: str) -> list[Domain]:
    """Parse ``DOMAIN[,DOMAIN...]`` (distinct domain ids or names) for argparse.

    Raises:
        argparse.ArgumentTypeError: an item is not a domain, or one is repeated.
    """
    parsed = [domain(item) for item in text.split(",")]
    if len(set(parsed)) != len(parsed):
        raise argparse.ArgumentTypeError(f"a domain is repeated in {text!r}")
    return parsed


def port(text: str) -> str:
    """Check a vchan port: a name of ``[a-zA-Z0-9_-]`` or an absolute XenStore path.

    Raises:
        argparse.ArgumentTypeError: neither.
    """
    try:
        vchan_path(0, 0, text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def buffer_size(text: str) -> int:
    """Parse ``--buffer-size``: bytes, 1 to 1 MiB (a ``K`` or ``M`` suffix multiplies by 1024).

    Raises:
        argparse.ArgumentTypeError: not a size in range.
    """
    scale = {"k": 1 << 10, "m": 1 << 20}.get(text[-1:].lower(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isascii() or not digits.isdigit():
        raise argparse.ArgumentTypeError(
            f"a size is a number of bytes up to 1M (1048576), like 65536 or 64K, not {text!r}"
        )
    try:
        return check_ring_size(int(digits) * scale, "the buffer size")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds(text: str) -> float:
    """Parse a timeout for argparse: a positive, finite number of seconds.

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"a timeout is a positive number of seconds, like 10 or 0.5, not {text!r}"
        )
    return value


def add_wait_options(parser: argparse.ArgumentParser, *, timeout_help: str) -> None:
    """``--timeout`` and ``--handshake-timeout`` (the latter for the server side, ``-l``)."""
    parser.add_argument(
        "--timeout", type=seconds, metavar="SECONDS", help=f"{timeout_help} (default: no limit)"
    )
    parser.add_argument(
        "--handshake-timeout",
        type=seconds,
        metavar="SECONDS",
        help=(
            "with -l: drop a client that takes the advertisement but does not complete the"
            " handshake within SECONDS, and advertise afresh"
            f" (default {DEFAULT_HANDSHAKE_TIMEOUT:g})"
        ),
    )


def handshake_timeout(given: float | None) -> float:
    """The ``handshake_timeout=`` for ``serve()`` or ``VchanListener()``: ``given``, or the
    library's default when ``--handshake-timeout`` was not given."""
    return DEFAULT_HANDSHAKE_TIMEOUT if given is None else given


def add_domain_options(parser: argparse.ArgumentParser) -> None:
    """``--domid`` (this domain on a simulated host) and ``--buffer-size``."""
    parser.add_argument(
        "--domid",
        type=domid,
        metavar="N",
        help=(
            "this domain's id on a simulated host (default: $TRIO_VCHAN_DOMID); on Xen the"
            " domain is known and N must match it"
        ),
    )
    parser.add_argument(
        "--buffer-size",
        type=buffer_size,
        default=DEFAULT_BUFFER_SIZE,
        metavar="BYTES",
        help=(
            "as xencat's: the minimum size of each ring when listening, and of each read"
            f" (default {DEFAULT_BUFFER_SIZE}; at most 1M)"
        ),
    )


def add_output_options(parser: argparse.ArgumentParser, progress_help: str) -> None:
    """``--progress`` and ``--quiet``, which exclude each other."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help=progress_help
    )
    group.add_argument(
        "-q",
        "--quiet",
        dest="progress",
        action="store_false",
        help="print nothing on stderr but errors",
    )


def environ_hint() -> str:
    """The environment variables the commands read, for the end of ``--help``."""
    return (
        "environment:\n"
        "  TRIO_VCHAN_SIM    directory of the simulated host to join (set by `trio-vchan sim`)\n"
        "  TRIO_VCHAN_DOMID  this domain's id on that host (overridden by --domid)\n"
    )


def subcommand_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str,
    epilog: str,
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` with its description and an epilog of examples kept as written."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"{epilog}\n{environ_hint()}" if epilog else environ_hint(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
