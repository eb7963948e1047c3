"""The admin API's request and response bodies (``gateway.http.admin``)."""

# No `from __future__ import annotations`: FastAPI resolves the Annotated aliases at runtime.
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from gateway.store.db import ApiKey

# Names are identifiers; free text may not carry NUL bytes (PostgreSQL refuses them, with a 500 before).
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]
Text = Annotated[str, Field(max_length=512, pattern=r"^[^\x00]*$")]
ModelPattern = Annotated[str, Field(pattern=r"^([A-Za-z0-9._:/+-]+|\*)$", max_length=256)]


class KeyCreate(BaseModel):
    tenant: Name
    app: Name
    models: list[ModelPattern] = Field(default_factory=list, description="Public model names; ['*'] for all.")
    scopes: list[Name] = Field(default_factory=lambda: ["chat", "embeddings"])
    name: Annotated[str, Field(max_length=128, pattern=r"^[^\x00]*$")] = ""


class KeyOut(BaseModel):
    key_id: str
    tenant: str
    app: str
    models: list[str]
    scopes: list[str]
    name: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(..., description="The API key. It is shown once and not stored.")


def key_out(row: ApiKey) -> dict[str, object]:
    return {
        "key_id": row.key_id,
        "tenant": row.tenant,
        "app": row.app,
        "models": [m for m in row.models.split(",") if m],
        "scopes": [s for s in row.scopes.split(",") if s],
        "name": row.name,
        "created_at": row.created_at,
        "revoked_at": row.revoked_at,
    }


SubjectIdField = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=r"^[^\x00]+$",
        description="Raw id; only its pseudonym is stored.",
    ),
]


class ConsentGrant(BaseModel):
    tenant: Name
    subject_id: SubjectIdField
    purpose: Name
    evidence_ref: Annotated[
        str, Field(max_length=256, pattern=r"^[^\x00]*$", description="Where the proof of consent is kept.")
    ] = ""
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class ConsentOut(BaseModel):
    id: str
    tenant: str
    subject: str = Field(..., description="The subject's pseudonym.")
    purpose: str
    granted_at: datetime
    expires_at: datetime | None
    withdrawn_at: datetime | None
    evidence_ref: str


class SubjectRequest(BaseModel):
    """A data subject named in the body (``POST /admin/subjects/erase|export``), so that the raw id stays out
    of URLs, which proxies and ingress controllers log."""

    model_config = ConfigDict(extra="forbid")

    subject_id: SubjectIdField
    tenant: Name | None = None
