"""ServeSpec and the seed's parallelism rules."""

from __future__ import annotations

import pytest

from slurm_sglang.spec import (
    SpecError,
    build_spec,
    check_parallelism,
    nodes_needed,
    parse_parallelism,
)


@pytest.mark.parametrize(
    ("argv", "sizes", "total", "replicas"),
    [
        # The seed's table: config -> (tp, ep, dp, pp), total GPUs, servers.
        (["--tp", "2", "--dp", "8"], (2, 1, 8, 1), 16, 8),
        (["--tp", "8", "--dp", "2"], (8, 1, 2, 1), 16, 2),
        (["--tp", "8", "--pp", "2"], (8, 1, 1, 2), 16, 1),
        (["--tp", "8", "--ep", "2"], (8, 2, 1, 1), 8, 1),
        (["--tp", "8", "--ep", "4"], (8, 4, 1, 1), 8, 1),
        (["--tp-size=16"], (16, 1, 1, 1), 16, 1),
        (["--tensor-parallel-size", "4", "--pp-size", "2"], (4, 1, 1, 2), 8, 1),
        (["--tp", "8", "--dp", "2", "--enable-dp-attention"], (8, 1, 2, 1), 8, 1),
    ],
)
def test_seed_table(argv: list[str], sizes: tuple[int, int, int, int], total: int,
                    replicas: int) -> None:
    par = parse_parallelism(argv)
    assert (par.tp, par.ep, par.dp, par.pp) == sizes
    assert par.total_gpus == total
    assert par.replicas == replicas


@pytest.mark.parametrize(
    ("argv", "gpus_per_node", "nodes"),
    [(["--tp", "16"], 8, 2), (["--tp", "8"], 8, 1), (["--tp", "2", "--dp", "8"], 8, 2),
     (["--tp", "8", "--pp", "2"], 8, 2), (["--tp", "8", "--ep", "2"], 8, 1),
     (["--tp", "3"], 8, 1), (["--tp", "16", "--dp", "2"], 8, 4)],
)
def test_nodes_needed(argv: list[str], gpus_per_node: int, nodes: int) -> None:
    assert nodes_needed(parse_parallelism(argv), gpus_per_node) == nodes


def test_ep_must_divide_tp() -> None:
    (problem,) = check_parallelism(parse_parallelism(["--tp", "8", "--ep", "3"]), 1, 8)
    assert problem.startswith("--ep 3 must divide --tp 8")


def test_tp_must_divide_nodes() -> None:
    problems = check_parallelism(parse_parallelism(["--tp", "3"]), 2, 8)
    assert any("(tp*pp) % nnodes == 0" in p for p in problems)


def test_too_many_gpus_shows_arithmetic() -> None:
    problems = check_parallelism(parse_parallelism(["--tp", "16", "--pp", "2"]), 2, 8)
    assert any(p.startswith("tp*pp*dp = 16*2*1 = 32 GPUs, but 2 node(s) x 8 GPUs = 16") for p in
               problems)


def test_seed_examples_fit_two_nodes() -> None:
    for argv in (["--tp", "16"], ["--tp", "8", "--pp", "2"],
                 ["--tp", "8", "--dp", "2", "--enable-dp-attention"]):
        assert check_parallelism(parse_parallelism(argv), 2, 8) == [], argv


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tp", "8"], "--model-path is required"),
        (["--model-path", "m", "--tp", "x"], "--tp: 'x' is not a whole number"),
        (["--model-path", "m", "--tp"], "--tp: missing value"),
        (["--model-path", "m", "--tp", "0"], "--tp: '0' is not a whole number"),
        (["--model-path", "m", "--nnodes", "2"], "--nnodes is set by the launcher"),
        (["--model-path", "m", "--node-rank=1"], "--node-rank is set by the launcher"),
        (["--model-path", "m", "--dist-init-addr", "a:1"], "--dist-init-addr is set by"),
        (["--model-path", "m", "--host", "1.2.3.4"], "--host is set by the launcher"),
        (["--model-path", "m\nrm -rf /"], "contains a newline"),
        (["--model-path", "m", "--api-key", "sk-1"], "--api-key on the command line shows in ps"),
    ],
)
def test_bad_specs(argv: list[str], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("*", r"\*")):
        build_spec(argv)


def test_port_out_of_range() -> None:
    with pytest.raises(SpecError, match="--port"):
        build_spec(["--model-path", "m"], port=70000)


def test_arguments_kept_byte_for_byte() -> None:
    argv = ["--model-path", "/models/my model", "--json-model-override-args",
            '{"rope_scaling": {"type": "yarn", "factor": 4.0}}', "--chat-template", "$HOME;`x`"]
    spec = build_spec(argv)
    assert list(spec.sglang_args) == argv
    assert spec.model_path == "/models/my model"
