from __future__ import annotations

import re
from pathlib import Path

from trio_vchan import _layout

PROTOCOL_RST = Path(__file__).resolve().parent.parent / "docs" / "protocol.rst"
FIELDS = {
    "left.cons": _layout.LEFT_CONS,
    "left.prod": _layout.LEFT_PROD,
    "right.cons": _layout.RIGHT_CONS,
    "right.prod": _layout.RIGHT_PROD,
    "left_order": _layout.LEFT_ORDER,
    "right_order": _layout.RIGHT_ORDER,
    "cli_live": _layout.CLI_LIVE,
    "srv_live": _layout.SRV_LIVE,
    "cli_notify": _layout.CLI_NOTIFY,
    "srv_notify": _layout.SRV_NOTIFY,
    "grants": _layout.GRANTS,
}


def test_protocol_page_table_matches_the_layout_module() -> None:
    rows = re.findall(r"\* - (\d+)\n\s+- \S+\n\s+- (\S+)\n", PROTOCOL_RST.read_text())
    documented = {field: int(offset) for offset, field in rows}
    assert documented == FIELDS
