"""Prices per deployment, in EUR as exact decimals.

A deployment's ``price:`` in config.yaml wins. Otherwise the price comes from litellm's model
price map, read from the JSON file inside the installed litellm package: litellm itself is
never imported (about 9 s and 215 MB) and nothing is fetched. litellm's prices are USD per
token; they are converted with ``accounting.usd_to_eur`` and the rate is kept for the ledger.
A deployment found nowhere costs 0 and says so (``source == "none"``).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from gateway.config import Config, Deployment

MILLION = Decimal(1_000_000)
_PRICE_FILE = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True, slots=True)
class Price:
    """EUR per one million tokens, plus where the figures came from."""

    input: Decimal
    output: Decimal
    cached: Decimal  # cached prompt tokens (prompt-cache reads)
    fx_rate: Decimal  # EUR per USD applied; 1 when the source price was in EUR
    source: str  # config | litellm | none

    def cost(self, prompt: int, completion: int, cached: int = 0) -> Decimal:
        """Exact cost in EUR; cached tokens are part of ``prompt`` and billed at the cached rate."""
        cached = min(cached, prompt)
        return ((prompt - cached) * self.input + cached * self.cached + completion * self.output) / MILLION


FREE = Price(Decimal(0), Decimal(0), Decimal(0), Decimal(1), "none")


@functools.cache
def litellm_prices() -> dict[str, Any]:
    """litellm's price map from its installed package; empty when litellm is not installed."""
    spec = importlib.util.find_spec("litellm")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / _PRICE_FILE
    return orjson.loads(path.read_bytes()) if path.is_file() else {}


def price_names(deployment: Deployment) -> list[str]:
    """The names a deployment may have in litellm's map, most specific first."""
    model = deployment.model
    if deployment.kind == "litellm":
        return [deployment.litellm_model or model, model]
    if deployment.kind == "azure_openai":
        return [f"azure/{model}", model]
    if "mistral.ai" in deployment.base_url:
        return [f"mistral/{model}", model]
    return [model]


def _per_1m(value: Any) -> Decimal:
    # str() of the float gives litellm's literal (2.5e-06), so the decimal is the published price.
    return Decimal(str(value or 0)) * MILLION


def price_for(deployment: Deployment, usd_to_eur: Decimal) -> Price:
    if deployment.price is not None:
        p = deployment.price
        rate = usd_to_eur if p.currency == "USD" else Decimal(1)
        return Price(p.input_per_1m * rate, p.output_per_1m * rate, p.input_per_1m * rate, rate, "config")
    table = litellm_prices()
    for name in price_names(deployment):
        entry = table.get(name)
        if isinstance(entry, dict) and entry.get("input_cost_per_token") is not None:
            inp = _per_1m(entry.get("input_cost_per_token"))
            cached = entry.get("cache_read_input_token_cost")
            return Price(
                inp * usd_to_eur,
                _per_1m(entry.get("output_cost_per_token")) * usd_to_eur,
                (_per_1m(cached) if cached is not None else inp) * usd_to_eur,
                usd_to_eur,
                "litellm",
            )
    return FREE


def price_table(config: Config) -> dict[str, Price]:
    """One Price per deployment, resolved once at start-up."""
    rate = config.accounting.usd_to_eur
    return {name: price_for(d, rate) for name, d in config.deployments.items()}
