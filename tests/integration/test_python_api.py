"""docs/python-api.md's notebook session, run as written on the sandbox: submit, wait for ready,
query with the openai client, cancel. Only the first cell's values (profile, model, workspace)
are the sandbox's; every other cell is executed as the page shows it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from serving import job_containers, shared_workspace, wait_job_gone

from slurm_sglang.sandbox.layout import SandboxInfo

pytestmark = pytest.mark.cluster
PAGE = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"


def _cells() -> list[str]:
    session = PAGE.read_text().split("## A notebook session", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", session, flags=re.S)


def test_the_notebook_session_submits_waits_queries_and_cancels(
        sandbox: SandboxInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openai")
    monkeypatch.setenv("SLURM_SGLANG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SGLANG_STANDIN_LOAD_SECONDS", "1")
    setup, *cells = _cells()
    assert "api.submit(" in cells[0] and "OpenAI(" in cells[2] and "api.cancel(" in cells[3]
    with shared_workspace(sandbox, "python-api") as workspace:
        model = workspace / "models" / "demo"
        model.mkdir(parents=True)
        (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
        namespace: dict[str, object] = {}
        exec(setup.split("\nprofile =")[0], namespace)  # the import line only
        namespace.update(profile=str(sandbox.profile_path), model=str(model),
                         workspace=str(workspace))
        try:
            for cell in cells:
                exec(cell, namespace)
        finally:
            # The client's pooled connection to the head would outlive the test (and show up in
            # test_remote's check of who holds connections to a head).
            client = namespace.get("client")
            if client is not None:
                client.close()  # type: ignore[attr-defined]
            job = namespace.get("job")
            job_id = getattr(job, "job_id", "")
            if job_id and "cancelled" not in namespace:
                subprocess.run(["scancel", job_id], check=False)
        printed = capsys.readouterr().out
        wait_job_gone(job_id)
        assert job_containers(sandbox, job_id) == {node: [] for node in sandbox.nodes}
    print(printed)
    assert f"job {job_id}: ready" in printed
    # The stand-in answers a chat completion with text; what it says is its own.
    reply = namespace["reply"]
    assert reply.choices[0].message.content  # type: ignore[attr-defined]
    assert f"job {job_id} cancelled (stopped); 2 node(s) confirmed" in printed
