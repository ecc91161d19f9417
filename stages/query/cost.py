"""Token prices and cost estimates for the query stage (docs/recipes.md#query).

Prices are USD per million tokens, per model, from OpenAI's price list for the models the
reference used (``gpt-4o-2024-08-06``) and its small sibling; the config may add or override
models. The Batch API bills half (``batch_discount`` 0.5).
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelPrice(BaseModel):
    """USD per million prompt (input) and completion (output) tokens."""
    model_config = ConfigDict(extra="forbid")

    prompt_usd_per_mtok: float = Field(..., ge=0)
    completion_usd_per_mtok: float = Field(..., ge=0)


#: Built-in prices (OpenAI list prices, standard tier). ``gpt-4o`` covers its dated snapshots
#: by prefix except the first one, which was dearer.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(prompt_usd_per_mtok=2.50, completion_usd_per_mtok=10.00),
    "gpt-4o-2024-05-13": ModelPrice(prompt_usd_per_mtok=5.00, completion_usd_per_mtok=15.00),
    "gpt-4o-mini": ModelPrice(prompt_usd_per_mtok=0.15, completion_usd_per_mtok=0.60),
}


def price_for(model: str, prices: dict[str, ModelPrice]) -> ModelPrice | None:
    """The price of ``model``: an exact entry in ``prices`` or :data:`DEFAULT_PRICES`, else the
    longest entry that is a dash-separated prefix of it (``gpt-4o-mini-2024-07-18`` ->
    ``gpt-4o-mini``); None when no entry fits (a local model: no price to estimate)."""
    table = {**DEFAULT_PRICES, **prices}
    if model in table:
        return table[model]
    best = max((name for name in table if model.startswith(name + "-")), key=len, default=None)
    return table[best] if best else None


def cost_usd(prompt_tokens: int, completion_tokens: int, price: ModelPrice | None, batch: bool = False,
             batch_discount: float = 0.5) -> float | None:
    """USD for the given tokens (None without a price); ``batch`` applies ``batch_discount``."""
    if price is None:
        return None
    usd = (prompt_tokens * price.prompt_usd_per_mtok + completion_tokens * price.completion_usd_per_mtok) / 1e6
    return usd * (1.0 - batch_discount) if batch else usd
