"""trio-vchan: Xen vchan shared-memory streams for Trio."""

from __future__ import annotations

from ._errors import BackendUnavailableError as BackendUnavailableError
from ._errors import ProtocolError as ProtocolError
from ._errors import XenStoreError as XenStoreError
from ._version import __version__ as __version__
