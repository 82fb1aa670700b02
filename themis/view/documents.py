"""What every workbench document is made of: JSON-able values, and the ``Missing`` a section raises.

The section builders (``run``, ``curation``, ``training``, ``evaluation``) and ``RunView``
(``themis.view.data``), which dispatches to them, both import this module, so neither imports
the other at run time.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any


class Missing(Exception):
    """A section (or part of one) that this run root cannot show; the message says why."""


def reason_head(reason: str) -> str:
    """A reject reason's kind, without the row's own detail (as ``generation`` counts them)."""
    return reason.split(":", 1)[0]


def jsonable(value: Any) -> Any:
    """A value JSON can carry: NaN and infinities become null, bytes their size, the rest as is."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, datetime):
        return value.isoformat()
    return value
