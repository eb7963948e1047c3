"""Where a gateway with this config.yaml connects to: the egress allow-list for its NetworkPolicy.

``gateway config egress`` prints it, and the Helm chart's ``networkPolicy.egress`` is generated from
it (docs/deploy.md). Residency then holds at two layers: the policies decide which deployment a
request may use, and the network lets the pod reach only the hosts the config names. A deployment
that no policy lets any app use (a US one, for apps without consent) is still listed: the network
layer cannot know the policies, and the policies stay the finer control.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from gateway.config import Config

_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "redis": 6379, "rediss": 6379}


@dataclass(frozen=True, order=True)
class Destination:
    name: str  # what it is: dns, database, redis, weaviate, weaviate-grpc, deployment/<name>
    host: str  # "" for DNS (any resolver)
    port: int
    protocol: str = "TCP"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]  # postgresql+psycopg
    return parts.hostname or "", parts.port or _DEFAULT_PORTS.get(scheme, 443)


def destinations(config: Config) -> list[Destination]:
    """Every destination the gateway may open a connection to, sorted; DNS first."""
    out = {Destination("dns", "", 53, "UDP"), Destination("dns", "", 53, "TCP")}
    storage = config.storage
    if storage.database_url.startswith("postgresql"):
        out.add(Destination("database", *_host_port(storage.database_url)))
    if storage.redis_url:
        out.add(Destination("redis", *_host_port(storage.redis_url)))
    weaviate = config.rag.weaviate if config.rag.backend == "weaviate" else None
    if weaviate is not None:
        host, port = _host_port(weaviate.url)
        out.add(Destination("weaviate", host, port))
        out.add(Destination("weaviate-grpc", weaviate.grpc_host or host, weaviate.grpc_port))
    for name, deployment in config.deployments.items():
        if deployment.base_url:
            out.add(Destination(f"deployment/{name}", *_host_port(deployment.base_url)))
    for issuer in config.auth.oidc:
        if issuer.jwks_url:
            out.add(Destination(f"oidc/{issuer.issuer}", *_host_port(issuer.jwks_url)))
    return sorted(out, key=lambda d: (d.name != "dns", d.name, d.host, d.port, d.protocol))
