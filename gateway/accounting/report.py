"""``gateway usage report``: the ledger summed per model, app or deployment."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from sqlalchemy import Engine, func, select

from gateway.store.db import utcnow
from gateway.store.ledger import UsageRecord

By = Literal["model", "app", "deployment", "jurisdiction", "key"]
_COLUMNS = {
    "model": "model",
    "app": "app",
    "deployment": "deployment",
    "jurisdiction": "jurisdiction",
    "key": "key_id",
}
_SINCE = re.compile(r"^(\d+)([hdw])$")


@dataclass(frozen=True)
class Line:
    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_eur: Decimal
    estimated: int  # requests whose counts are estimates


def parse_since(value: str) -> timedelta:
    """``30d``, ``12h`` or ``2w``; raises ValueError otherwise."""
    m = _SINCE.match(value.strip())
    if not m:
        raise ValueError(f"--since must look like 30d, 12h or 2w, not {value!r}")
    n, unit = int(m.group(1)), m.group(2)
    return {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]


def report(
    engine: Engine, tenant: str, since: timedelta, by: By = "model", now: datetime | None = None
) -> list[Line]:
    col = getattr(UsageRecord, _COLUMNS[by])
    t = UsageRecord.__table__.c  # type: ignore[attr-defined]
    query = (
        select(
            col,
            func.count(),
            func.coalesce(func.sum(t.prompt_tokens), 0),
            func.coalesce(func.sum(t.completion_tokens), 0),
            func.coalesce(func.sum(t.cost_eur), 0),
            func.coalesce(func.sum(func.cast(t.estimated, type_=t.prompt_tokens.type)), 0),
        )
        .where(t.tenant == tenant, t.at >= (now or utcnow()) - since)
        .group_by(col)
        .order_by(func.sum(t.cost_eur).desc(), col)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [Line(str(g), int(n), int(p), int(c), Decimal(str(cost)), int(e)) for g, n, p, c, cost, e in rows]
