"""How tests start ``python -m trio_vchan`` so that it runs the installed package.

``python -m`` puts the current directory first on ``sys.path``; run from a checkout, that is the
source tree, whose ``trio_vchan`` has no compiled ``_native`` unless it was installed in place.
``-P`` (Python 3.11+) leaves the current directory out.
"""

from __future__ import annotations

import sys

SAFE_PATH: tuple[str, ...] = ("-P",) if sys.version_info >= (3, 11) else ()
