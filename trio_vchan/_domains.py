"""Domain names: the domain whose ``/local/domain/<domid>/name`` in XenStore is a given name.

Xen's toolstack (``xl create``) and Qubes write each domain's name there, and ``xl list`` shows
it. Finding a name means listing ``/local/domain`` and reading every domain's ``name`` (in one
transaction, two round trips), which C xenstored allows dom0 (and domains the toolstack lets
read ``/local/domain``), not ordinary domUs: those get a message that says to use the id.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

from ._backend import DOMID_MAX, check_domid
from ._errors import XenStoreError
from ._xenstore import XenStoreClient

#: A domain as callers give it: its id, or its name.
Domain = int | str


class DomainNameError(LookupError):
    """A domain name that names no domain, or several, or that this domain may not look up."""


def check_domain(domain: object, what: str = "domid") -> int | str:
    """Check ``domain`` without looking it up: a valid id, or a name that could exist.

    Raises:
        TypeError: neither an int nor a str.
        ValueError: an id out of range, or an empty name or one with ``/`` or NUL.
    """
    if isinstance(domain, str):
        if not domain or "/" in domain or "\0" in domain:
            raise ValueError(
                f"{what}: a domain name is not empty and has no '/' or NUL: {domain!r}"
            )
        return domain
    if not isinstance(domain, int) or isinstance(domain, bool):
        raise TypeError(
            f"{what} must be a domain id (int) or a domain name (str), not {type(domain).__name__}"
        )
    return check_domid(domain, what)


async def domain_id(
    domain: Domain, xenstore: Callable[[], Awaitable[XenStoreClient]], what: str = "domid"
) -> int:
    """The id of ``domain``: itself if an id, else the one domain that has that name.

    ``xenstore`` gives the client to ask; it is only called for a name.

    Raises:
        TypeError, ValueError: as :func:`check_domain`.
        DomainNameError: no domain, or several, have that name, or this domain may not list
            ``/local/domain``.
        XenStoreError: XenStore failed otherwise.
    """
    checked = check_domain(domain, what)
    if isinstance(checked, int):
        return checked
    return await find_domain(await xenstore(), checked)


async def find_domain(xs: XenStoreClient, name: str) -> int:
    """The id of the one domain named ``name`` (see :func:`domain_id`)."""
    try:
        entries = await xs.directory("/local/domain")
    except XenStoreError as exc:
        if exc.errno != errno.EACCES:
            raise
        raise DomainNameError(
            f"cannot look up the domain named {name!r}: this domain may not list /local/domain"
            " in XenStore (on Xen only dom0 and domains the toolstack allows may); give its"
            " domain id instead"
        ) from exc
    ids = sorted(int(e) for e in entries if e.isascii() and e.isdigit() and int(e) <= DOMID_MAX)
    names = await xs.read_together([f"/local/domain/{d}/name" for d in ids]) if ids else []
    wanted = name.encode()
    matches = [d for d, value in zip(ids, names, strict=True) if value == wanted]
    if not matches:
        raise DomainNameError(
            f"no domain is named {name!r} (no /local/domain/<domid>/name in XenStore has that"
            " value): check the name (`xl list` shows them) or give the domain id"
        )
    if len(matches) > 1:
        listed = ", ".join(map(str, matches))
        raise DomainNameError(
            f"{len(matches)} domains are named {name!r} (domains {listed}): give the domain id"
        )
    return matches[0]
