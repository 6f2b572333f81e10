"""What the head serves besides generation: readiness, auth, model and server info."""

from __future__ import annotations

import argparse
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any

from . import __version__
from .metrics import Metrics
from .server_args import served_model_name

DEFAULT_CONTEXT_LENGTH = 32768
RANK_FIELDS = ("node_rank", "hostname", "ip", "pid", "gpus", "argv")


class HeadService:
    """The head's state shared by every request thread."""

    def __init__(
        self, args: argparse.Namespace, ranks: list[dict[str, Any]], token_seconds: float
    ) -> None:
        self.args = args
        self.ranks = [{key: rank.get(key) for key in RANK_FIELDS} for rank in ranks]
        self.name = served_model_name(args)
        self.context_length = int(args.context_length or DEFAULT_CONTEXT_LENGTH)
        self.token_seconds = token_seconds
        self.first_token_seconds = 0.0
        self.fault = ""
        self.fault_every = 1
        self._generations = 0
        self.ready = threading.Event()
        self.created = int(time.time())
        self._running_lock = threading.Lock()
        self._running = 0
        # sglang mounts /metrics only with --enable-metrics.
        self.metrics = (Metrics(self.name, args.max_total_tokens) if args.enable_metrics
                        else None)
        # Runs before every forward batch; the group makes it block once a peer is gone.
        self.before_forward: Callable[[], None] = lambda: None

    def fault_now(self) -> str:
        """The fault for this generation request: every fault_every-th one gets it."""
        if not self.fault:
            return ""
        with self._running_lock:
            self._generations += 1
            return self.fault if self._generations % self.fault_every == 0 else ""

    def count_running(self, change: int) -> None:
        """Add `change` (+1 at start, -1 at end) to the number of requests in flight."""
        with self._running_lock:
            self._running += change

    def load(self) -> list[dict[str, Any]]:
        """The /get_load body: requests in flight, as sglang reports per DP rank."""
        with self._running_lock:
            running = self._running
        return [{"dp_rank": 0, "num_reqs": running, "num_waiting_reqs": 0, "num_tokens": 0}]

    def authorized(self, authorization: str | None) -> bool:
        """True if no --api-key is set or the request carries `Bearer <key>`."""
        if not self.args.api_key:
            return True
        expected = f"Bearer {self.args.api_key}"
        return authorization is not None and hmac.compare_digest(authorization, expected)

    def models(self) -> dict[str, Any]:
        """The /v1/models body."""
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict[str, Any]:
        """The /v1/models/{name} body."""
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "sglang",
            "root": self.args.model_path,
            "parent": None,
            "max_model_len": self.context_length,
        }

    def model_info(self) -> dict[str, Any]:
        """The /model_info body."""
        return {
            "model_path": self.args.model_path,
            "tokenizer_path": self.args.tokenizer_path or self.args.model_path,
            "served_model_name": self.name,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": "standin",
            "architectures": ["StandinForCausalLM"],
        }

    def server_info(self) -> dict[str, Any]:
        """The /server_info body: the parsed args, plus every rank's argv, host, IP and GPUs."""
        info: dict[str, Any] = dict(vars(self.args))
        if info.get("api_key"):
            info["api_key"] = "***"
        info.update(
            {
                "version": __version__,
                "standin": True,
                "status": "ready" if self.ready.is_set() else "warming_up",
                "nnodes": self.args.nnodes,
                "served_model_name": self.name,
                "ranks": self.ranks,
                "internal_states": [{"last_gen_throughput": 0.0, "standin": True}],
            }
        )
        return info
