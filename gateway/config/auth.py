"""``auth:`` in config.yaml: sign-in with OpenID Connect access tokens (JWT), next to virtual keys."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.config.deployments import Strict

# Asymmetric algorithms only: `none` and the HMAC family (which would let anyone holding the public
# key sign) are not in the type, so config.yaml cannot allow them.
Algorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]

_PRESETS: dict[str, dict[str, str]] = {
    # Keycloak: the client is `azp`, realm roles under `realm_access.roles`; the tenant from a mapper.
    "keycloak": {"tenant": "tenant", "app": "azp", "scopes": "scope", "roles": "realm_access.roles"},
    # Auth0: custom claims are namespaced URLs (`namespace` + name); the client is `azp`.
    "auth0": {"tenant": "{ns}tenant", "app": "{ns}app", "scopes": "scope", "roles": "{ns}roles"},
}


class Claims(Strict):
    """Where each part of the principal is read, as a claim path: a top-level claim name (which may
    contain dots, like Auth0's namespaced URLs), else a dotted path into nested objects."""

    tenant: str | None = Field(None, description="Claim holding the tenant. Unset: the issuer's `tenant`.")
    app: str | None = Field(None, description="Claim holding the app (e.g. `azp`, the client).")
    scopes: str | None = Field(
        None, description="Claim holding the scopes (a space-separated string or a list), e.g. `scope`."
    )
    roles: str | None = Field(
        None, description="Claim holding the roles (a list), e.g. `realm_access.roles`."
    )
    subject: str | None = Field(
        None,
        description="Claim naming the data subject (e.g. `sub` for tokens of end users). When set and present,"
        " it is the request's subject, whatever `user` says. Unset: the request's `user` / X-Subject-Id.",
    )


class OidcIssuer(Strict):
    issuer: str = Field(..., min_length=1, description="The exact `iss` of the tokens.")
    audience: list[str] = Field(..., min_length=1, description="Accepted `aud` values (the gateway's API).")
    jwks_url: str | None = Field(None, description="Where the issuer publishes its signing keys (JWKS).")
    jwks_file: str | None = Field(None, description="A JWKS file instead of a URL, for air-gapped sites.")
    algorithms: list[Algorithm] = Field(
        ["RS256", "ES256"], min_length=1, description="Signature algorithms accepted."
    )
    leeway_s: float = Field(30.0, ge=0, le=300, description="Clock skew allowed on `exp`, `nbf` and `iat`.")
    jwks_refresh_min_s: float = Field(
        60.0,
        ge=0.05,
        le=86_400,
        description="At most one JWKS refresh per this many seconds when a token names an unknown key (`kid`).",
    )
    preset: Literal["keycloak", "auth0", "custom"] = Field(
        "custom", description="Claim paths of a known provider; `claims` overrides single ones."
    )
    namespace: str = Field(
        "", description="The Auth0 preset's claim namespace, e.g. `https://execai.example/`."
    )
    claims: Claims = Field(Claims(), description="Claim paths (override the preset's).")
    tenant: str | None = Field(
        None, description="Fixed tenant for every token of this issuer (no tenant claim)."
    )
    models: list[str] = Field(["*"], description="Public model names its tokens may use; ['*'] for all.")
    admin_role: str = Field(
        "gateway-admin", description="Role that grants the `admin` scope (its tenant only)."
    )
    global_admin_role: str | None = Field(None, description="Role that grants `global_admin` (every tenant).")

    @model_validator(mode="after")
    def _one_key_source(self) -> OidcIssuer:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url and jwks_file")
        if self.preset == "auth0" and not self.namespace:
            raise ValueError("the auth0 preset needs `namespace` (the prefix of its custom claims)")
        return self

    def claim_paths(self) -> dict[str, str | None]:
        """The claim path of each principal part: the preset's, overridden by ``claims``."""
        preset = {k: v.format(ns=self.namespace) for k, v in _PRESETS.get(self.preset, {}).items()}
        own = self.claims.model_dump(exclude_none=True)
        return {name: own.get(name, preset.get(name)) for name in Claims.model_fields}


class Auth(Strict):
    oidc: list[OidcIssuer] = Field(
        default_factory=list, description="OpenID Connect issuers whose access tokens sign in (docs/auth.md)."
    )

    @model_validator(mode="after")
    def _unique_issuers(self) -> Auth:
        issuers = [i.issuer for i in self.oidc]
        if len(set(issuers)) != len(issuers):
            raise ValueError("each issuer may be listed once")
        return self
