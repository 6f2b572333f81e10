"""What one rank knows of its node: hostname, the IP sglang would pick, and its GPUs."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from typing import Any


class GpuError(RuntimeError):
    """The rank was told to use a GPU its node does not show it (CUDA's invalid ordinal)."""


def node_hostname() -> str:
    """The node's hostname, as each sandbox node sets its own."""
    return socket.gethostname()


def node_ip(environ: Mapping[str, str] = os.environ) -> str:
    """SGLANG_HOST_IP, else HOST_IP, else the hostname's address (sglang skips no step but NICs)."""
    for name in ("SGLANG_HOST_IP", "HOST_IP"):
        value = environ.get(name, "").strip()
        if value:
            return value
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def gpus_per_node(args: argparse.Namespace) -> int:
    """Ranks (GPUs) one node runs: tp*pp/nnodes, times dp for single-node data parallelism."""
    replicas = args.dp_size if args.nnodes == 1 else 1
    return int(args.tp_size * args.pp_size * replicas // args.nnodes)


def node_gpus(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The GPUs this rank uses: ordinals from --base-gpu-id by --gpu-id-step, and physical ids."""
    visible_raw = environ.get("CUDA_VISIBLE_DEVICES")
    visible = [item.strip() for item in visible_raw.split(",")] if visible_raw else None
    ordinals = [args.base_gpu_id + index * args.gpu_id_step for index in range(gpus_per_node(args))]
    physical = [
        (visible[ordinal] if ordinal < len(visible) else None) if visible else str(ordinal)
        for ordinal in ordinals
    ]
    return {
        "cuda_visible_devices": visible_raw,
        "base_gpu_id": args.base_gpu_id,
        "gpu_id_step": args.gpu_id_step,
        "ordinals": ordinals,
        "physical": physical,
    }


def check_gpus(gpus: dict[str, Any], gpus_on_node: int | None) -> None:
    """Fail as CUDA does when an ordinal is past the GPUs this process can see."""
    visible_raw = gpus["cuda_visible_devices"]
    available = len(visible_raw.split(",")) if visible_raw else gpus_on_node
    ordinals: list[int] = gpus["ordinals"]
    if available is not None and any(ordinal >= available for ordinal in ordinals):
        shown = f", CUDA_VISIBLE_DEVICES={visible_raw}" if visible_raw else ""
        raise GpuError(
            "torch.AcceleratorError: CUDA error: invalid device ordinal "
            f"(GPU ordinals {ordinals} asked for, {available} visible{shown})"
        )
