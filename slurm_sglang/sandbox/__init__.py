"""The local multi-node SLURM sandbox: namespaced nodes, fake GPUs, podman, a test image."""

from slurm_sglang.sandbox.cluster import sandbox_down, sandbox_status, sandbox_up
from slurm_sglang.sandbox.host import SandboxError
from slurm_sglang.sandbox.image import build_standin_image
from slurm_sglang.sandbox.layout import SandboxInfo

__all__ = [
    "SandboxError",
    "SandboxInfo",
    "build_standin_image",
    "sandbox_down",
    "sandbox_status",
    "sandbox_up",
]
