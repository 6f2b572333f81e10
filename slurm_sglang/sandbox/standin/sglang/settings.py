"""The stand-in's own knobs, read once from the environment at start (never at import).

SGLANG_STANDIN_LOAD_SECONDS (0): model loading time. SGLANG_STANDIN_FIRST_TOKEN_SECONDS (0): the
delay before a generation's first token (a prefill). SGLANG_STANDIN_FAULT (unset): `no-tokens`
answers every generation with 0 tokens, `error` answers it with HTTP 500, `truncate` ends every
stream after half its tokens, without the final chunk or [DONE] (benchmark gates).
SGLANG_STANDIN_FAULT_EVERY (1): the fault hits every Nth generation request only.
SGLANG_STANDIN_WARMUP_SECONDS (0.3): the head's warm-up, /health 503.
SGLANG_STANDIN_TOKEN_SECONDS (0): time per generated token.
SGLANG_STANDIN_DIST_TIMEOUT (600): --dist-timeout's default. SGLANG_STANDIN_LOAD_BARRIER_SECONDS
(480): wait for slow nodes. SGLANG_STANDIN_HEARTBEAT_SECONDS (1) and _HEARTBEAT_TIMEOUT (5): how
soon a hung peer breaks the group. SGLANG_STANDIN_NUM_GPUS (unset): GPUs the node has, checked
like CUDA's device ordinals when CUDA_VISIBLE_DEVICES is unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_DIST_TIMEOUT_SECONDS = 600.0  # torch.distributed's default
LOAD_BARRIER_SECONDS = 480.0  # sglang's wait for nodes that load slowly


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {raw!r}")
    return value


FAULTS = ("", "no-tokens", "error", "truncate")


def _fault(environ: Mapping[str, str]) -> str:
    fault = environ.get("SGLANG_STANDIN_FAULT", "").strip()
    if fault not in FAULTS:
        raise ValueError(f"SGLANG_STANDIN_FAULT must be one of {', '.join(FAULTS[1:])}, "
                         f"got {fault!r}")
    return fault


def _every(environ: Mapping[str, str]) -> int:
    raw = environ.get("SGLANG_STANDIN_FAULT_EVERY", "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"SGLANG_STANDIN_FAULT_EVERY must be a whole number from 1, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class StandinSettings:
    """Delays and timeouts that imitate a real model's timing (all in seconds)."""

    load_seconds: float
    warmup_seconds: float
    token_seconds: float
    first_token_seconds: float
    dist_timeout_seconds: float
    load_barrier_seconds: float
    heartbeat_interval_seconds: float
    heartbeat_timeout_seconds: float
    gpus_on_node: int | None
    fault: str = ""
    fault_every: int = 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> StandinSettings:
        """Read every SGLANG_STANDIN_* variable, with defaults."""
        gpus_raw = environ.get("SGLANG_STANDIN_NUM_GPUS", "").strip()
        return cls(
            load_seconds=_seconds(environ, "SGLANG_STANDIN_LOAD_SECONDS", 0.0),
            warmup_seconds=_seconds(environ, "SGLANG_STANDIN_WARMUP_SECONDS", 0.3),
            token_seconds=_seconds(environ, "SGLANG_STANDIN_TOKEN_SECONDS", 0.0),
            first_token_seconds=_seconds(environ, "SGLANG_STANDIN_FIRST_TOKEN_SECONDS", 0.0),
            dist_timeout_seconds=_seconds(
                environ, "SGLANG_STANDIN_DIST_TIMEOUT", DEFAULT_DIST_TIMEOUT_SECONDS
            ),
            load_barrier_seconds=_seconds(
                environ, "SGLANG_STANDIN_LOAD_BARRIER_SECONDS", LOAD_BARRIER_SECONDS
            ),
            heartbeat_interval_seconds=_seconds(environ, "SGLANG_STANDIN_HEARTBEAT_SECONDS", 1.0),
            heartbeat_timeout_seconds=_seconds(environ, "SGLANG_STANDIN_HEARTBEAT_TIMEOUT", 5.0),
            gpus_on_node=int(gpus_raw) if gpus_raw else None,
            fault=_fault(environ),
            fault_every=_every(environ),
        )
