"""Fixtures and helpers for tests on the local SLURM sandbox (`python -m slurm_sglang sandbox up`).

Tests marked `@pytest.mark.cluster` skip when the sandbox is not up. Helpers for any test:
`node_exec(node, argv)` runs a command inside a node's namespaces (its hostname, address
and container storage); `containers_on(node, label=None)` lists the podman containers there.
"""

from __future__ import annotations

import pytest

from slurm_sglang.sandbox.cluster import sandbox_status
from slurm_sglang.sandbox.layout import SandboxInfo
from slurm_sglang.sandbox.nodes import containers_on, node_exec

__all__ = ["NOT_UP", "containers_on", "node_exec"]

NOT_UP = "sandbox not up: run python -m slurm_sglang sandbox up"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip cluster-marked tests, with the command that fixes it, while the sandbox is down."""
    if item.get_closest_marker("cluster") is not None and sandbox_status() is None:
        pytest.skip(NOT_UP)


@pytest.fixture(scope="session")
def sandbox() -> SandboxInfo:
    """The running sandbox: nodes, addresses, shared dir, profile path, image tarball."""
    info = sandbox_status()
    if info is None:
        pytest.skip(NOT_UP)
    return info
