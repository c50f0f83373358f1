"""Learning this domain's id from XenStore (the relative key ``domid``), synchronously.

:class:`~trio_vchan.Backend` carries the domid as a plain value and backends are opened from
synchronous code (``VchanListener.__init__``), possibly inside a running Trio loop. So the one
XenStore read runs on its own Trio loop in a short-lived worker thread, through the project's
:class:`~trio_vchan._xenstore.XenStoreClient`, with a time limit so a silent store cannot hang
the caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import trio

from .._backend import check_domid
from .._errors import ProtocolError
from .._xenstore import XenStoreClient

#: How long the store may take to answer (generous: under emulation a dom0 is slow).
DOMID_TIMEOUT: Final = 30.0


async def read_domid(connect: Callable[[], Awaitable[trio.abc.Stream]]) -> int:
    """Read the relative key ``domid`` over a fresh connection.

    Raises:
        XenStoreError: the store refused (``ENOENT``: the toolstack never wrote it).
        ProtocolError: the value is not a domain id.
        trio.TooSlowError: no answer within :data:`DOMID_TIMEOUT` seconds.
    """
    with trio.fail_after(DOMID_TIMEOUT):
        async with XenStoreClient(await connect()) as xs:
            value = await xs.read("domid")
    text = value.decode("ascii", "replace")
    if not (text.isascii() and text.isdecimal()):
        raise ProtocolError(f"XenStore says our domid is {text!r}, not a number")
    try:
        return check_domid(int(text))
    except ValueError as exc:
        raise ProtocolError(f"XenStore says our domid is {text!r}: {exc}") from None


def read_domid_blocking(connect: Callable[[], Awaitable[trio.abc.Stream]]) -> int:
    """:func:`read_domid` from synchronous code, even from inside a Trio task."""
    with ThreadPoolExecutor(1, thread_name_prefix="trio-vchan-domid") as pool:
        return pool.submit(trio.run, read_domid, connect).result()
