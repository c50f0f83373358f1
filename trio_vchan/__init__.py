"""trio-vchan: Xen vchan shared-memory streams for Trio."""

from __future__ import annotations

from ._advertisement import PeerGoneError as PeerGoneError
from ._api import VchanListener as VchanListener
from ._api import connect as connect
from ._api import open_vchan_stream as open_vchan_stream
from ._api import serve as serve
from ._api import serve_vchan as serve_vchan
from ._backend import Backend as Backend
from ._errors import BackendUnavailableError as BackendUnavailableError
from ._errors import ProtocolError as ProtocolError
from ._errors import XenStoreError as XenStoreError
from ._layout import Live as Live
from ._layout import Role as Role
from ._stream import VchanStream as VchanStream
from ._version import __version__ as __version__
