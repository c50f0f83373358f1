"""The Xen backend for Linux domains: ``/dev/xen/{evtchn,gntalloc,gntdev}`` and XenStore.

``open_backend()`` is what :func:`trio_vchan._api.default_backend` uses when
``/dev/xen/evtchn`` exists. The ioctl numbers and request structs come from the kernel's uapi
headers, compiled into :mod:`trio_vchan._xen_devices` by ``build_xen_devices.py``.
"""

from __future__ import annotations

from ._open import open_backend as open_backend
