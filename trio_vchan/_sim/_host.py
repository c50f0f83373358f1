"""The simulated Xen host: its directory of sockets and the trio tasks that serve them.

Theory of operation
-------------------
A host is a private directory of Unix sockets served by one trio task tree:

- ``host``: the control socket (only HELLO, INTRODUCE_DOMAIN and DESTROY_DOMAIN);
- ``domains/<N>/platform``: event channels and grants (:mod:`._host_state`); a connection
  here *is* domain N;
- ``domains/<N>/xenstore``: the XenStore wire protocol, served by :mod:`._xenstored`.

Each domain's sockets are served by one task (``_serve_domain``) whose cancel scope covers its
accept loops and every connection they accepted, so destroying the domain ends them all. The
platform and XenStore state of the domain is released synchronously first, so nothing a
cancelled task could still do (it only ever reaches a closed connection) can be seen.

The client side's calls block, so a backend in the host's own process would wait for the
very trio loop it blocks: :meth:`SimulatedHost.backend` skips the socket and calls the state
directly (``_host_state.LocalTransport``), and :func:`backend_from_environ` finds a host
running in this process (each running host is listed by its directory in
``SimulatedHost._in_this_process``).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final, final

import attrs
import trio

from .._backend import PAGE_SIZE, Backend, check_domid
from ._client import hello, join, make_backend, parse_environ
from ._fds import ANCILLARY_SPACE, close_quietly, fds_ancillary, received_fds
from ._host_state import EVENT_CHANNELS_DEFAULT, LocalTransport, PlatformState, Result
from ._proto import ENV_DIR, ENV_DOMID, MESSAGE_MAX, VERSION, Op, Reply, Request, domain_dir, ok
from ._xenstored import XenStoreServer

if TYPE_CHECKING:
    from types import TracebackType

log = logging.getLogger(__name__)

_SOCKET_PATH_MAX: Final = 107  # sizeof(sun_path) - 1
#: A connection whose requests are always there is served this many at a time (and a listener
#: whose connections always wait, accepted this many at a time).
_REQUESTS_BETWEEN_CHECKPOINTS: Final = 16
#: Platform connections an unprivileged domain may hold at once: one per process that uses the
#: platform (a vchan process holds one, shared by its vchans). Beyond it, a new one is closed at
#: once, so a domain cannot use up the host's fds and memory; dom0 is not limited.
PLATFORM_CONNECTIONS_PER_DOMAIN: Final = 256


@attrs.define(eq=False)
class _ServedDomain:
    """A domain's two listening sockets and the cancel scope of the tasks serving them."""

    domid: int
    xenstore: socket.socket
    platform: socket.socket
    cancel_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)


@final
class SimulatedHost:
    """A simulated Xen host for processes on this machine.

    Use it as ``async with SimulatedHost() as host:``; the servers run until the block ends,
    then every resource is released and the directory is removed. Dom0 always exists; other
    domains are created by :meth:`add_domain`, :meth:`backend` and :meth:`environ`, or by a
    process joining with :func:`~trio_vchan.sim.backend_from_environ`, and end with
    :meth:`destroy_domain` or when the host stops.

    Args:
        directory: where to put the sockets. By default a fresh private temporary directory;
            a given directory is created (mode 0700) if missing; an existing one must be
            empty, and keeps its mode.
        names: names of domains, by domain id (see :meth:`name_domain`); dom0 is
            ``"Domain-0"`` unless named here.
        max_event_channels: the ports each domain may have open at once, as xl's option of
            that name: 4096 unless given (the 2-level event-channel ABI's limit), at most
            131072 (the FIFO ABI's). A bind past it fails with ``ENOSPC``.

    Raises:
        TypeError, ValueError: a domain id or a name in ``names`` is not valid, or two
            domains have the same name; ``max_event_channels`` is out of range.
    """

    #: The hosts running in this process, by their directory's real path.
    _in_this_process: ClassVar[dict[str, SimulatedHost]] = {}

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        names: Mapping[int, str] | None = None,
        max_event_channels: int = EVENT_CHANNELS_DEFAULT,
    ) -> None:
        self._platform = PlatformState(max_event_channels)
        self._names: dict[int, str] = {0: DOM0_NAME}
        for domid, name in (names or {}).items():
            self._set_name(check_domid(domid), name)
        self._requested = None if directory is None else os.fspath(directory)
        self._directory: Path | None = None
        self._real_directory = ""  # the key of _in_this_process
        self._created_directory = False
        self._xenstore: XenStoreServer | None = None
        self._xenstore_baseline: set[str] = set()
        self._domains: dict[int, _ServedDomain] = {}
        self._nursery: trio.Nursery | None = None
        self._stack = contextlib.AsyncExitStack()
        self._listeners: list[socket.socket] = []
        self._served = 0
        self._platform_connections: collections.Counter[int] = collections.Counter()
        self._refusing: set[int] = set()  # domains at their platform connection limit
        self._idle = trio.lowlevel.ParkingLot()
        self._stopped = False

    # -- lifetime ---------------------------------------------------------------------------------

    async def __aenter__(self) -> SimulatedHost:
        if self._directory is not None or self._stopped:
            raise RuntimeError("a SimulatedHost can be started only once")
        self._make_directory()
        try:
            self._xenstore = XenStoreServer()
            self._xenstore_baseline = set(self._xenstore.paths())
            self._nursery = await self._stack.enter_async_context(trio.open_nursery())
            control = self._listen(self._path("host"), socket.SOCK_SEQPACKET)
            self._nursery.start_soon(self._accept_loop, control, self._serve_control, -1)
            self.add_domain(0)
            self._in_this_process[self._real_directory] = self
        except BaseException:
            await self._stop(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._stop(exc_type, exc, tb)

    async def _stop(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._stopped = True
        if self._in_this_process.get(self._real_directory) is self:
            del self._in_this_process[self._real_directory]
        try:
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            try:
                return await self._stack.__aexit__(exc_type, exc, tb)
            except BaseException as error:
                if exc is not None and raised_only(error, exc):
                    return False  # the block's own exception, not wrapped by our nursery
                raise
        finally:
            for listener in self._listeners:
                listener.close()
            self._platform.close()
            self._remove_directory()

    def _make_directory(self) -> None:
        if self._requested is None:
            self._directory = Path(tempfile.mkdtemp(prefix="trio-vchan-sim-"))
            self._created_directory = True
        else:
            path = Path(self._requested).absolute()
            try:
                path.mkdir(mode=0o700)
                self._created_directory = True
            except FileExistsError:
                if not path.is_dir() or any(path.iterdir()):
                    raise ValueError(
                        f"the simulated host's directory {path} must be empty or absent"
                    ) from None
                # The caller's own directory keeps the mode the caller gave it.
            self._directory = path
        self._real_directory = os.path.realpath(self._directory)
        # Every socket path must fit in sun_path; check the longest one now.
        longest = self._directory / "domains" / "32751" / "xenstore"
        if len(os.fsencode(longest)) > _SOCKET_PATH_MAX:
            self._remove_directory()
            raise ValueError(
                f"the directory {self._directory} is too long for Unix socket paths "
                f"(at most {_SOCKET_PATH_MAX - len('/domains/32751/xenstore')} bytes)"
            )

    def _remove_directory(self) -> None:
        directory = self._directory
        if directory is None:
            return
        if self._created_directory:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            shutil.rmtree(directory / "domains", ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (directory / "host").unlink()

    # -- public interface -------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        """The host's directory (what ``TRIO_VCHAN_SIM`` names).

        Raises:
            RuntimeError: the host is not running.
        """
        return str(self._running_directory())

    def add_domain(self, domid: int) -> None:
        """Create domain ``domid`` (its sockets and XenStore home) if it does not exist.

        Call it from the trio thread that runs the host.

        Raises:
            TypeError, ValueError: ``domid`` is not a valid domain id.
            RuntimeError: the host is not running.
        """
        check_domid(domid)
        directory = self._running_directory()
        if domid in self._domains:
            return
        assert self._nursery is not None
        assert self._xenstore is not None
        here = domain_dir(directory, domid)
        here.mkdir(mode=0o700, parents=True, exist_ok=True)
        xenstore = self._listen(here / "xenstore", socket.SOCK_STREAM)
        try:
            platform = self._listen(here / "platform", socket.SOCK_SEQPACKET)
        except BaseException:
            xenstore.close()
            raise
        with self._platform.lock:
            self._platform.add_domain(domid)
        before = set(self._xenstore.paths())
        name = self._names.get(domid)
        if self._xenstore.has_domain(domid):  # dom0, which the store starts with
            if name is not None:
                self._xenstore.set_domain_name(domid, name)
        else:
            self._xenstore.add_domain(domid, name)
        self._xenstore_baseline |= set(self._xenstore.paths()) - before
        served = _ServedDomain(domid, xenstore, platform)
        self._domains[domid] = served
        self._nursery.start_soon(self._serve_domain, served)

    def name_domain(self, domid: int, name: str) -> None:
        """Give domain ``domid`` the name ``name``, as Xen's toolstack does (``xl rename``).

        The name is written to ``/local/domain/<domid>/name`` (owned by dom0, readable by
        the domain, as on Xen; only dom0 may read other domains' names), now if the domain
        exists and whenever it is created again. Dom0 is ``"Domain-0"`` unless renamed.

        A name is 1 to 64 printable ASCII characters without spaces or ``/``, not all digits
        (so that it never reads as a domain id), and is not another domain's name.

        Call it from the trio thread that runs the host (or before the host starts).

        Raises:
            TypeError, ValueError: ``domid`` or ``name`` is not valid, or another domain has
                that name.
        """
        self._set_name(check_domid(domid), name)
        if domid in self._domains:
            assert self._xenstore is not None
            self._xenstore.set_domain_name(domid, name)
            self._xenstore_baseline.add(f"/local/domain/{domid}/name")

    def _set_name(self, domid: int, name: str) -> None:
        check_domain_name(name)
        for other, taken in self._names.items():
            if taken == name and other != domid:
                raise ValueError(f"the domain name {name!r} is domain {other}'s already")
        self._names[domid] = name

    def destroy_domain(self, domid: int) -> None:
        """Destroy domain ``domid`` now, as Xen's ``xl destroy`` does.

        What others see happens in this order, as if every process of the domain had died at
        the same moment:

        1. the unmap-notify of every share and mapping the domain holds is performed (the
           byte cleared, then the event sent), and the shares and mappings are released;
        2. every event-channel port of the domain is closed: each remote end is fired and
           reports peer closed (``SimEventChannel.peer_closed``);
        3. the domain's platform and XenStore connections are dropped, including those of
           :meth:`backend`, and its sockets are removed;
        4. ``/local/domain/<domid>`` is removed (firing its watches) and ``@releaseDomain``
           fires (for dom0's watches: other domains may not see special nodes).

        All of it is done when the call returns, except that the dropped connections are
        closed when the host's tasks next run; a request that arrives meanwhile fails
        (``EPIPE`` from the platform, the end of the stream from XenStore), never hangs. So a
        watcher that sees ``@releaseDomain`` also sees every effect on the platform.

        The domain's processes are not killed (the host does not know them): their fds and
        mmaps stay valid, but every request they make fails. Pages of the domain that another
        domain maps stay mapped (readable, and writable if mapped so) until that domain
        unmaps them, as on Xen, where a dying domain's granted pages live until the last
        foreign mapping goes; :meth:`leaks` lists their grants meanwhile. Afterwards the
        domain id can be used again: :meth:`add_domain` (or :meth:`backend`,
        :meth:`environ`, a joining process) creates a fresh domain. From another process:
        ``trio-vchan sim --destroy DOMID``.

        Call it from the trio thread that runs the host.

        Raises:
            TypeError, ValueError: ``domid`` is not a valid domain id, or is 0 (dom0 cannot be
                destroyed).
            ProcessLookupError: there is no domain ``domid`` (an :class:`OSError` with
                ``errno`` ``ESRCH``).
            RuntimeError: the host is not running.
        """
        check_domid(domid)
        directory = self._running_directory()
        if domid == 0:
            raise ValueError("domain 0 cannot be destroyed")
        served = self._domains.pop(domid, None)
        if served is None:
            raise ProcessLookupError(errno.ESRCH, f"there is no domain {domid} on this host")
        assert self._xenstore is not None
        self._platform.destroy_domain(domid)
        served.cancel_scope.cancel()
        self._xenstore.disconnect_domain(domid)
        for listener in (served.xenstore, served.platform):
            self._listeners.remove(listener)  # closed by _serve_domain as it ends
        shutil.rmtree(domain_dir(directory, domid), ignore_errors=True)
        self._xenstore.remove_domain(domid)
        self._xenstore_baseline &= set(self._xenstore.paths())

    def backend(self, domid: int) -> Backend:
        """Return a :class:`~trio_vchan.Backend` for domain ``domid``, in this process.

        Its event-channel and grant calls go straight to the host (a blocking socket would
        deadlock the host's own trio loop); XenStore is reached through its socket.

        Raises:
            TypeError, ValueError: ``domid`` is not a valid domain id.
            RuntimeError: the host is not running.
        """
        self.add_domain(domid)
        transport = LocalTransport(self._platform, self._platform.connect(domid))
        directory = self._running_directory()
        hello(transport)
        return make_backend(domid, transport, domain_dir(directory, domid) / "xenstore")

    def environ(self, domid: int) -> dict[str, str]:
        """Return the variables a process needs to join this host as ``domid`` (and create it).

        Raises:
            TypeError, ValueError: ``domid`` is not a valid domain id.
            RuntimeError: the host is not running.
        """
        self.add_domain(domid)
        return {ENV_DIR: self.directory, ENV_DOMID: str(domid)}

    def leaks(self) -> list[str]:
        """Describe what is still allocated: ports, grants, mappings and XenStore nodes
        created since their domains were added. Empty when everything was released.

        Resources of processes whose connection the host has not yet seen close are still
        listed: :meth:`wait_idle` first.
        """
        found = self._platform.leaks()
        if self._xenstore is not None:
            found.extend(
                f"xenstore node {path}"
                for path in self._xenstore.paths()
                if path not in self._xenstore_baseline
            )
        return found

    @property
    def xenstore_requests(self) -> collections.Counter[tuple[int, str]]:
        """How many requests the simulated XenStore received, by ``(domid, operation)``.

        A new :class:`collections.Counter` each time (a snapshot). ``domid`` is the domain of
        the connection, ``operation`` the request type's name in ``xs_wire.h`` without
        ``XS_`` (``"READ"``, ``"WRITE"``, ``"TRANSACTION_START"``, ...; an unknown type code
        is named by its decimal number). Every request from any client (ours, Xen's own
        tools) counts as soon as the store reads it, whether it succeeds or fails, so it has
        been counted by the time its reply arrives. Count the round trips of one step by
        subtracting snapshots::

            before = host.xenstore_requests
            await step()
            assert host.xenstore_requests - before == Counter({(1, "READ"): 2})

        or start from zero with :meth:`reset_xenstore_requests`. The counts stay readable
        after the host stopped; before it started they are empty.
        """
        if self._xenstore is None:
            return collections.Counter()
        return collections.Counter(self._xenstore.requests)

    def reset_xenstore_requests(self) -> None:
        """Set every count of :attr:`xenstore_requests` back to zero."""
        if self._xenstore is not None:
            self._xenstore.requests.clear()

    @property
    def platform_requests(self) -> collections.Counter[tuple[int, str]]:
        """How many platform requests the host received, by ``(domid, operation)``: as
        :attr:`xenstore_requests`, for the event-channel and grant requests of
        docs/sim-protocol.md (``"GNT_SHARE"``, ``"EVTCHN_CLOSE"``, ...), from every
        connection (trio-vchan's and the Xen-library shim's) and from this process's own
        :meth:`backend`. Reset with :meth:`reset_platform_requests`."""
        with self._platform.lock:
            return collections.Counter(self._platform.requests)

    def reset_platform_requests(self) -> None:
        """Set every count of :attr:`platform_requests` back to zero."""
        with self._platform.lock:
            self._platform.requests.clear()

    async def wait_idle(self) -> None:
        """Wait until no client is connected to any socket of the host.

        Use it after other processes exited (and in-process XenStore clients closed), before
        :meth:`leaks`: the host notices a closed connection only when it next runs.
        """
        while self._served:
            await self._idle.park()
        await trio.lowlevel.checkpoint()

    # -- serving ----------------------------------------------------------------------------------

    def _running_directory(self) -> Path:
        if self._directory is None or self._stopped:
            raise RuntimeError("the simulated host is not running (use `async with`)")
        return self._directory

    def _path(self, name: str) -> Path:
        return self._running_directory() / name

    def _listen(self, path: Path, kind: int) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            sock.bind(os.fspath(path))
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
        self._listeners.append(sock)
        return sock

    async def _serve_domain(self, served: _ServedDomain) -> None:
        """Serve a domain's sockets until :meth:`destroy_domain` or the host stops."""
        try:
            with served.cancel_scope:
                async with trio.open_nursery() as nursery:
                    for listener, serve in (
                        (served.xenstore, self._serve_xenstore),
                        (served.platform, self._serve_platform),
                    ):
                        nursery.start_soon(self._accept_loop, listener, serve, served.domid)
        finally:
            served.xenstore.close()
            served.platform.close()

    async def _accept_loop(self, listener: socket.socket, serve: _Server, domid: int) -> None:
        """Accept connections and serve each in a child task, until cancelled.

        On the plain sockets, with trio only to wait (as :meth:`_serve_requests`): every
        connection waiting is accepted in one pass, and a connection costs no wrapper objects.
        """
        async with trio.open_nursery() as nursery:
            unwaited = 0  # connections accepted since this task last let others run
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    unwaited = 0
                    await trio.lowlevel.wait_readable(listener)
                    continue
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("cannot accept a connection (%s); retrying", exc)
                        await trio.sleep(0.1)
                        continue
                    raise
                conn.setblocking(False)
                self._served += 1
                nursery.start_soon(self._serve_counted, conn, serve, domid)
                unwaited += 1
                if unwaited == _REQUESTS_BETWEEN_CHECKPOINTS:  # a domain that connects nonstop
                    unwaited = 0  # must not keep the others from being served
                    await trio.lowlevel.checkpoint()

    async def _serve_counted(self, conn: socket.socket, serve: _Server, domid: int) -> None:
        try:
            with conn:
                await serve(conn, domid)
        finally:
            self._served -= 1
            self._idle.unpark_all()

    async def _serve_xenstore(self, conn: socket.socket, domid: int) -> None:
        assert self._xenstore is not None
        try:
            await self._xenstore.handle_connection(conn, domid)
        except Exception:
            log.exception("the XenStore server failed on a connection of domain %d", domid)

    async def _serve_platform(self, conn: socket.socket, domid: int) -> None:
        held = self._platform_connections
        if domid != 0 and held[domid] >= PLATFORM_CONNECTIONS_PER_DOMAIN:
            if domid not in self._refusing:  # once while it is at the limit, not per attempt
                self._refusing.add(domid)
                log.warning(
                    "domain %d has %d platform connections open, the most it may have:"
                    " closing its new ones until one of those closes",
                    domid,
                    PLATFORM_CONNECTIONS_PER_DOMAIN,
                )
            return  # the caller closes it: the client reads the end of the stream
        client = self._platform.connect(domid)
        held[domid] += 1
        try:
            await self._serve_requests(conn, lambda data: self._platform.handle(client, data))
        finally:
            held[domid] -= 1
            self._refusing.discard(domid)
            self._platform.disconnect(client)

    async def _serve_control(self, conn: socket.socket, domid: int) -> None:
        await self._serve_requests(conn, self._control_request)

    def _control_request(self, data: bytes) -> Result:
        try:
            request = Request.decode(data)
        except ValueError as exc:
            return Result(Reply(errno.EINVAL, message=f"malformed request: {exc}"))
        if request.op == Op.HELLO and not request.words:
            return Result(ok((VERSION, 0xFFFFFFFF, PAGE_SIZE)))
        domain_ops: dict[int, Callable[[int], None]] = {
            Op.INTRODUCE_DOMAIN: self.add_domain,
            Op.DESTROY_DOMAIN: self.destroy_domain,
        }
        if request.op in domain_ops and not request.words:
            try:
                domain_ops[request.op](check_domid(request.args[0]))
            except ValueError as exc:
                return Result(Reply(errno.EINVAL, message=str(exc)))
            except OSError as exc:
                return Result(Reply(exc.errno or errno.EIO, message=exc.strerror or str(exc)))
            return Result(ok())
        return Result(
            Reply(
                errno.ENOSYS,
                message="the host socket takes HELLO, INTRODUCE_DOMAIN and DESTROY_DOMAIN",
            )
        )

    async def _serve_requests(self, sock: socket.socket, answer: _Answer) -> None:
        """Answer ``sock``'s requests until it hangs up (the caller closes it).

        On the plain socket, with trio only to wait: a reply almost always fits the socket's
        buffer at once, and a request is usually waited for once, so each round trip costs one
        pass of the scheduler, not the three of trio's socket methods.
        """
        unwaited = 0  # requests answered since this task last let others run
        while True:
            try:
                data, ancdata, flags, _ = sock.recvmsg(MESSAGE_MAX, ANCILLARY_SPACE)
            except BlockingIOError:
                unwaited = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError:
                return
            result = _answer_message(data, ancdata, flags, answer)
            if result is None:
                return
            try:
                await _send_reply(sock, result)
            except OSError:
                return
            finally:
                close_quietly(result.temporary)
            unwaited += 1
            if unwaited == _REQUESTS_BETWEEN_CHECKPOINTS:  # a client that never waits
                unwaited = 0  # must not keep the others from being served
                await trio.lowlevel.checkpoint()


async def _send_reply(sock: socket.socket, result: Result) -> None:
    message, ancillary = [result.reply.encode()], fds_ancillary(result.fds)
    while True:
        try:
            sock.sendmsg(message, ancillary)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
            return


_TRUNCATED: Final = int(socket.MSG_TRUNC | socket.MSG_CTRUNC)  # an int: flags are one


def _answer_message(data: bytes, ancdata: Ancillary, flags: int, answer: _Answer) -> Result | None:
    """The reply to one received message; None ends the connection."""
    close_quietly(received_fds(ancdata))  # clients send no fds; don't keep any
    if not data:
        return None  # end of file (or a forbidden empty message)
    if flags & _TRUNCATED:
        return Result(Reply(errno.EMSGSIZE, message="request too long"))
    try:
        return answer(data)
    except Exception:
        log.exception("internal error answering a request; dropping the client")
        return None


#: Xen's name for dom0.
DOM0_NAME: Final = "Domain-0"
_NAME_MAX: Final = 64


def raised_only(error: BaseException, exc: BaseException) -> bool:
    """Whether ``error`` is ``exc`` alone, maybe in (nested) groups of one, as a nursery wraps
    the exception of the block it encloses; a context manager that runs a nursery around its
    caller's block lets that exception go on as raised instead of as a group."""
    while error is not exc:
        # A BaseExceptionGroup (a backport before 3.11).
        inner: Sequence[BaseException] = getattr(error, "exceptions", ())
        if len(inner) != 1:
            return False
        error = inner[0]
    return True


def check_domain_name(name: object) -> str:
    """Return ``name`` if it can name a domain of the simulated host.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: it is empty or longer than 64 characters, has a character that is not
            printable ASCII or is a space or ``/``, or is all digits.
    """
    if not isinstance(name, str):
        raise TypeError(f"a domain name is a str, not {type(name).__name__}")
    if not 1 <= len(name) <= _NAME_MAX:
        raise ValueError(f"a domain name has 1 to {_NAME_MAX} characters, not {len(name)}")
    bad = [c for c in name if not ("!" <= c <= "~") or c == "/"]
    if bad:
        raise ValueError(
            f"the domain name {name!r} has {bad[0]!r}: use printable ASCII without spaces or /"
        )
    if name.isdigit():
        raise ValueError(f"the domain name {name!r} is all digits: it would read as a domain id")
    return name


def backend_from_environ(environ: Mapping[str, str] | None = None) -> Backend:
    """Join the simulated host named by ``TRIO_VCHAN_SIM`` as domain ``TRIO_VCHAN_DOMID``.

    The domain is created if the host does not have it yet. In the process that runs the host
    (call it from the host's trio thread then), this is :meth:`SimulatedHost.backend`.

    Args:
        environ: the environment to read (default :data:`os.environ`).

    Raises:
        BackendUnavailableError: a variable is unset or the directory is not a running host.
        ValueError: ``TRIO_VCHAN_DOMID`` is not a valid domain id.
    """
    directory, domid = parse_environ(os.environ if environ is None else environ)
    host = SimulatedHost._in_this_process.get(os.path.realpath(directory))
    if host is not None:
        return host.backend(domid)
    return join(directory, domid)


if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._fds import Ancillary

    _Server = Callable[[socket.socket, int], Awaitable[None]]
    _Answer = Callable[[bytes], Result]
