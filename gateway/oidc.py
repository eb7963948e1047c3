"""Sign-in with OpenID Connect access tokens (JWT), next to virtual keys (``auth.oidc`` in config.yaml).

A bearer token of three dot-separated parts is checked here:

1. its header's ``alg`` must be in the issuer's allow-list (asymmetric algorithms only: ``none`` and
   HMAC are refused before anything else);
2. its ``iss`` must be a configured issuer, and its ``kid`` one of that issuer's keys (JWKS). A kid
   the cached JWKS lacks triggers one refresh, at most every ``jwks_refresh_min_s``: that is how a key
   rotation at the provider is followed, and a flood of made-up kids costs one fetch per interval;
3. the signature, ``exp``/``nbf``/``iat`` (with ``leeway_s``), ``aud`` and ``iss`` are checked by PyJWT;
4. tenant, app, scopes, roles and subject are read from the configured claim paths.

Each failure is a 401 with its own ``code`` (``oidc.expired``, ``oidc.wrong_audience``...), and the
message never echoes the token. A verified token's principal is cached until it expires.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

from gateway.auth import Principal
from gateway.config.auth import OidcIssuer
from gateway.errors import GatewayError

log = logging.getLogger("gateway.oidc")

USER_SCOPES = frozenset({"chat", "embeddings", "models"})
_CACHE_MAX = 10_000


def _refused(code: str, message: str) -> GatewayError:
    return GatewayError(401, f"oidc.{code}", message, headers={"WWW-Authenticate": "Bearer"})


def _name(value: Any, what: str, paths: dict[str, str | None]) -> str:
    """A tenant or app name from the token: a non-empty string of at most 128 characters."""
    if not isinstance(value, str) or not value or len(value) > 128:
        raise _refused("claim_missing", f"The token has no usable {what} claim ({paths[what] or what}).")
    return value


def _words(value: Any) -> list[str]:
    """Scopes or roles: a space-separated string or a list; anything that is not a string is ignored."""
    if isinstance(value, str):
        return value.split()
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def claim(claims: dict[str, Any], path: str | None) -> Any:
    """The value at a claim path: a top-level name first (it may hold dots), else a dotted path."""
    if path is None:
        return None
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class _Keys:
    """One issuer's signing keys, from its JWKS URL or file, refreshed on an unknown kid (rate-bounded)."""

    def __init__(self, issuer: OidcIssuer) -> None:
        self.issuer = issuer
        self.keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}  # kid -> (key, the alg the JWKS declares)
        self.fetched_at = -1e18
        self.fetches = 0
        self._lock = asyncio.Lock()

    async def get(self, kid: str) -> tuple[jwt.PyJWK, str | None] | None:
        key = self.keys.get(kid)
        if key is not None:
            return key
        async with self._lock:  # concurrent misses wait for one refresh
            key = self.keys.get(kid)
            if key is None and time.monotonic() - self.fetched_at >= self.issuer.jwks_refresh_min_s:
                await self._refresh()
                key = self.keys.get(kid)
        return key

    async def _refresh(self) -> None:
        self.fetched_at = time.monotonic()
        self.fetches += 1
        try:
            if self.issuer.jwks_url is not None:
                async with httpx.AsyncClient(timeout=5.0) as client:
                    resp = await client.get(self.issuer.jwks_url)
                    resp.raise_for_status()
                    raw = resp.content
            else:
                raw = await asyncio.to_thread(Path(str(self.issuer.jwks_file)).read_bytes)
            keys = orjson.loads(raw)["keys"]
        except Exception as exc:  # the provider is away: tokens it signed cannot be checked now  # noqa: BLE001
            log.warning("JWKS of %s could not be read (%s)", self.issuer.issuer, type(exc).__name__)
            raise GatewayError(
                503,
                "oidc.jwks_unavailable",
                "The identity provider's signing keys cannot be read right now; retry shortly.",
                headers={"Retry-After": "5"},
            ) from None
        fresh: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        for entry in keys if isinstance(keys, list) else ():
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or "kid" not in entry:
                continue
            try:
                declared = entry.get("alg")
                fresh[str(entry["kid"])] = (jwt.PyJWK(entry), declared if isinstance(declared, str) else None)
            except jwt.PyJWKError:
                continue  # a key type this gateway does not accept
        self.keys = fresh


class OidcVerifier:
    """Turns an access token into a ``Principal``, or raises the 401 that says why not."""

    def __init__(self, issuers: list[OidcIssuer]) -> None:
        self.issuers = {i.issuer: i for i in issuers}
        self.keys = {i.issuer: _Keys(i) for i in issuers}
        self._verified: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    async def principal(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._verified.get(digest)
        if hit is not None and hit[0] > time.time():
            return hit[1]
        claims, issuer = await self._verify(token)
        paths = issuer.claim_paths()
        tenant = _name(claim(claims, paths["tenant"]) if paths["tenant"] else issuer.tenant, "tenant", paths)
        app = _name(claim(claims, paths["app"]), "app", paths)
        given = {s for s in _words(claim(claims, paths["scopes"])) if s in USER_SCOPES}
        roles = set(_words(claim(claims, paths["roles"])))
        if issuer.admin_role in roles:
            given.add("admin")
        if issuer.global_admin_role is not None and issuer.global_admin_role in roles:
            given.add("global_admin")
        subject = claim(claims, paths["subject"])
        sub = str(claims.get("sub", ""))
        principal = Principal(
            key_id="oidc-" + hashlib.sha256(f"{issuer.issuer}\0{sub}".encode()).hexdigest()[:27],
            tenant=tenant,
            app=app,
            models=frozenset(issuer.models),
            scopes=frozenset(given),
            subject=subject if isinstance(subject, str) and 0 < len(subject) <= 256 else None,
        )
        if len(self._verified) >= _CACHE_MAX:
            self._verified.popitem(last=False)
        self._verified[digest] = (float(claims["exp"]), principal)
        return principal

    async def _verify(self, token: str) -> tuple[dict[str, Any], OidcIssuer]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError:
            raise _refused("malformed", "The bearer token is not a well-formed JWT.") from None
        issuer = self.issuers.get(str(unverified.get("iss")))
        if issuer is None:
            raise _refused("wrong_issuer", "The token's issuer is not one this gateway trusts.")
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise _refused("alg_not_allowed", f"Tokens signed with {str(alg)[:16]!r} are not accepted.")
        kid = header.get("kid")
        found = await self.keys[issuer.issuer].get(kid) if isinstance(kid, str) else None
        if found is None:
            raise _refused("unknown_kid", "The token was signed with a key the issuer does not publish.")
        key, declared = found
        if declared is not None and declared != alg:
            raise _refused(
                "alg_not_allowed", "The token's algorithm is not the one its key is published for."
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=issuer.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise _refused("expired", "The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise _refused("not_yet_valid", "The token is not valid yet.") from None
        except jwt.InvalidAudienceError:
            raise _refused("wrong_audience", "The token is not meant for this gateway (aud).") from None
        except jwt.InvalidIssuerError:
            raise _refused("wrong_issuer", "The token's issuer is not one this gateway trusts.") from None
        except jwt.InvalidSignatureError:
            raise _refused("bad_signature", "The token's signature does not verify.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refused("claim_missing", f"The token lacks the {exc.claim!r} claim.") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise _refused("malformed", "The bearer token is not a valid JWT.") from None
        return claims, issuer
