"""Which domain this process is, and the backend that speaks for it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from .._api import default_backend, lookup_domain
from .._backend import Backend
from .._domains import Domain, DomainNameError
from .._sim._proto import ENV_DIR, ENV_DOMID
from ._status import CommandError, ExitStatus


@contextmanager
def open_backend(domid: int | None) -> Iterator[Backend]:
    """Open this domain's backend for the command's lifetime, and close it after.

    Args:
        domid: ``--domid``: on a simulated host, the domain to join (instead of
            ``TRIO_VCHAN_DOMID``); on Xen, a check of the domain we are.

    Raises:
        CommandError: ``--domid`` does not match the Xen domain, or ``TRIO_VCHAN_DOMID`` is
            not a domain id (status 2).
        BackendUnavailableError: no platform.
    """
    try:
        if domid is not None and os.environ.get(ENV_DIR):
            # Imported here, as the library's default backend imports it: only when used.
            from ..sim import backend_from_environ

            backend = backend_from_environ({**os.environ, ENV_DOMID: str(domid)})
        else:
            backend = default_backend()
    except ValueError as exc:  # a bad TRIO_VCHAN_DOMID
        raise CommandError(str(exc), ExitStatus.USAGE) from None
    try:
        if domid is not None and backend.domid != domid:
            raise CommandError(f"--domid {domid}: this is domain {backend.domid}", ExitStatus.USAGE)
        yield backend
    finally:
        backend.close()


async def resolve_domain(domain: Domain, backend: Backend) -> int:
    """The id of ``domain`` as the command line gave it (a name is looked up in XenStore).

    Raises:
        CommandError: a name that names no one domain, or that this domain may not look up
            (status 2).
    """
    try:
        return await lookup_domain(domain, backend=backend)
    except DomainNameError as exc:
        raise CommandError(str(exc), ExitStatus.USAGE) from None
