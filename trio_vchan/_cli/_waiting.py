"""Waiting for the other domain: saying what we wait for, and giving up.

Setting up a vchan waits, without limit, for the other domain: a client for its server to
advertise the vchan, a server for its client to connect. :func:`waiting` surrounds that wait.
After :data:`NOTICE_DELAY` it says once what it waits for (a wait that ends sooner is not
worth a line), and with a timeout it gives up, so that a script learns that the other domain
never came instead of hanging.
"""

from __future__ import annotations

import errno
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import attrs
import trio

from .._advertisement import REFUSED_ERRNOS
from .._errors import XenStoreError
from .._handshake import vchan_path
from .._xenstore import XenStoreClient
from ._status import CommandError, ExitStatus, describe

if TYPE_CHECKING:
    from .._backend import Backend

#: How long a wait goes unmentioned: most connections are made well within it.
NOTICE_DELAY: Final = 1.0
#: How long the notice may take to look the other domain up in XenStore.
LOOKUP_TIME: Final = 1.0


@attrs.frozen
class Wait:
    """What a command waits for: the server or a client in another domain.

    Attributes:
        peer: the other domain.
        port: the vchan's port, as the command line gave it.
        path: the vchan's XenStore directory.
        listening: whether we are the server, waiting for the client to connect.
    """

    peer: int
    port: str
    path: str
    listening: bool

    @classmethod
    def between(cls, own_domid: int, peer: int, port: str, *, listening: bool) -> Wait:
        """The wait of domain ``own_domid`` for ``peer`` on ``port``."""
        server, client = (own_domid, peer) if listening else (peer, own_domid)
        return cls(peer, port, vchan_path(server, client, port), listening)

    def __str__(self) -> str:
        action = "connect to" if self.listening else "serve"
        return f"domain {self.peer} to {action} {self.port!r} ({self.path})"


class GaveUp(CommandError):
    """``--timeout`` ran out before the other domain was there (status 124).

    Args:
        wait: what we waited for.
        timeout: for how long, in seconds.
    """

    def __init__(self, wait: Wait, timeout: float) -> None:
        super().__init__(f"gave up after {timeout:g} s waiting for {wait}", ExitStatus.TIMED_OUT)


def refused(exc: BaseException) -> CommandError | None:
    """A XenStore refusal during setup (the library's message says what was being done and
    what to do), as a command error; None: ``exc`` is something else."""
    if not isinstance(exc, XenStoreError) or exc.errno not in REFUSED_ERRNOS:
        return None
    return CommandError(exc.strerror or str(exc))


def check_other_domain(own_domid: int, peer: int) -> None:
    """Refuse a vchan to our own domain, as Qubes' libvchan does.

    Raises:
        CommandError: ``peer`` is this domain (status 2).
    """
    if peer == own_domid:
        raise CommandError(
            f"domain {peer} is this domain: a vchan connects two different domains",
            ExitStatus.USAGE,
        )


async def absent_domain(backend: Backend, domid: int) -> str:
    """What the notice adds when domain ``domid`` is not in XenStore (it may not exist yet,
    or the number is wrong); empty when it is there, or when we may not look."""
    with trio.move_on_after(LOOKUP_TIME):
        try:
            async with XenStoreClient(await backend.connect_xenstore()) as xs:
                await xs.read(f"/local/domain/{domid}")
        except XenStoreError as exc:
            # ENOENT only where we may read /local/domain: elsewhere xenstored says EACCES.
            if exc.errno == errno.ENOENT:
                return (
                    f"; there is no domain {domid} (yet: /local/domain/{domid} is not in"
                    " XenStore); check the domain number, or start it"
                )
        except OSError:
            pass  # the notice goes out without it
    return ""


@asynccontextmanager
async def waiting(
    wait: Wait,
    *,
    give_up_after: float | None,
    notify: Callable[[str], None] | None,
    backend: Backend | None = None,
) -> AsyncIterator[Callable[[], None]]:
    """Surround the setup of a vchan, and whatever follows it in the block.

    Yields ``connected``, which the block calls once the vchan is set up: from then on
    nothing is said and the timeout no longer applies. Until then, after
    :data:`NOTICE_DELAY` seconds ``notify`` is called once with ``"waiting for ..."``
    (unless it has given up by then), and after ``give_up_after`` seconds the block is
    cancelled. The block may hold the vchan's own ``async with``: the cancel scope and the
    nursery here enclose it entirely.

    Args:
        wait: what the setup waits for, for the messages.
        give_up_after: ``--timeout``: seconds to wait at most; None waits for ever.
        notify: prints a line (None: ``--quiet``).
        backend: where to look the other domain up for the notice (it says when XenStore
            has no such domain).

    Raises:
        GaveUp: ``give_up_after`` ran out before ``connected`` was called.
        CommandError: the setup raised ValueError (a bad argument, such as our own domain):
            status 2, with its message.
    """
    give_up = trio.move_on_after(math.inf if give_up_after is None else give_up_after)
    notice = trio.CancelScope()
    failure: Exception | None = None
    set_up = False

    def connected() -> None:
        nonlocal set_up
        set_up = True
        notice.cancel()
        give_up.deadline = math.inf

    async def say_once() -> None:
        with notice:
            await trio.sleep(NOTICE_DELAY)
            if notify is None:
                return
            absent = "" if backend is None else await absent_domain(backend, wait.peer)
            # Both deadlines may pass at once on a busy machine: then only give up.
            if not give_up.cancel_called:
                notify(f"waiting for {wait}{absent}")

    async with trio.open_nursery() as nursery:
        with give_up:  # its clock starts here, as the notice's
            nursery.start_soon(say_once)
            try:
                yield connected
            except Exception as exc:
                # Raised after the nursery, so that callers see it as it is (no group).
                failure = exc
            finally:
                notice.cancel()
    if isinstance(failure, ValueError) and not set_up:
        raise CommandError(describe(failure), ExitStatus.USAGE) from None
    explained = None if failure is None or set_up else refused(failure)
    if explained is not None:
        raise explained from None
    if failure is not None:
        raise failure
    if give_up.cancelled_caught:
        assert give_up_after is not None  # only a finite deadline cancels
        raise GaveUp(wait, give_up_after)
