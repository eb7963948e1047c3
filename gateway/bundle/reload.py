"""Hot reload: the policy directory watched, a changed bundle swapped in, a bad one refused."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gateway.bundle.model import Bundle, BundleHolder
from gateway.bundle.parse import load_bundle
from gateway.config import Config
from gateway.yamlsrc import ConfigError

log = logging.getLogger("gateway.policy")


async def watch(holder: BundleHolder, directory: Path, stop: asyncio.Event) -> None:
    """Reload the bundle when a file under ``directory`` changes; keep the last good one on error."""
    from watchfiles import awatch

    from gateway import metrics

    async for _changes in awatch(directory, stop_event=stop, debounce=200, step=50):
        try:
            bundle = await asyncio.to_thread(load_bundle, [directory])
        except ConfigError as exc:
            metrics.POLICY_RELOAD_FAILURES.inc()
            log.error(
                "policy reload rejected; keeping bundle %s",
                holder.current.hash,
                extra={"problems": exc.problems},
            )
            continue
        except Exception as exc:  # a failed reload keeps the last good bundle  # noqa: BLE001
            metrics.POLICY_RELOAD_FAILURES.inc()
            log.error(
                "policy reload failed; keeping bundle %s",
                holder.current.hash,
                extra={"exc_type": type(exc).__name__},
            )
            continue
        if bundle.hash != holder.current.hash:
            holder.swap(bundle)
            metrics.POLICY_RELOADS.inc()
            log.info("policy bundle reloaded", extra={"policy_hash": bundle.hash})


def load_holder(config: Config) -> BundleHolder:
    directory = Path(config.server.policies_dir)
    if not directory.exists():
        return BundleHolder(Bundle.empty())
    return BundleHolder(load_bundle([directory]))
