"""ServeSpec: what the user asked to serve, and the parallelism rules it must satisfy.

The sglang arguments stay a list of strings from the command line to the rank's argv; this
module only reads the parallel sizes out of them and refuses what sglang would refuse hours
later, after the queue and the model load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import ceil

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slurm_sglang.errors import UserInputError

# Every spelling sglang 0.5.23 accepts for a parallel size (argparse prefixes included), and
# the seed's short forms. --pp is ambiguous to sglang itself; sglang_flags rewrites it.
PARALLEL_FLAGS: dict[str, tuple[str, ...]] = {
    "tp": ("--tp", "--tp-size", "--tensor-parallel-size"),
    "pp": ("--pp", "--pp-size", "--pipeline-parallel-size"),
    "dp": ("--dp", "--dp-size", "--data-parallel-size"),
    "ep": ("--ep", "--ep-size", "--expert-parallel-size"),
    "attn_dp": ("--attn-dp-size",),
}
DP_ATTENTION_FLAG = "--enable-dp-attention"
# The launcher sets these per rank; a user value would contradict the allocation.
RESERVED_FLAGS: dict[str, str] = {
    "--nnodes": "the number of nodes comes from the allocation (salloc/sbatch -N)",
    "--node-rank": "each rank gets its own --node-rank from SLURM_NODEID",
    "--dist-init-addr": "the head's address is found inside the allocation (use --dist-port)",
    "--host": "ranks listen on 0.0.0.0 so the head is reachable from other nodes",
}
# Secrets never travel on a command line, where ps and the logs would show them.
SECRET_FLAGS: dict[str, str] = {
    "--api-key": "--api-key on the command line shows in ps and in logs; put the key in a file "
    "and pass --api-key-file FILE, or set SLURM_SGLANG_API_KEY",
}
MODEL_FLAGS = ("--model-path", "--model")


class SpecError(UserInputError):
    """An invalid serve request; the message names the flag and the fix."""


@dataclass(frozen=True)
class Parallelism:
    """The parallel sizes read from sglang's arguments."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    attn_dp: int = 1
    dp_attention: bool = False

    @property
    def gpus_per_server(self) -> int:
        """GPUs one sglang server (one replica) uses: attention DP and EP subdivide TP."""
        return self.tp * self.pp

    @property
    def replicas(self) -> int:
        """Independent servers: plain DP makes replicas; attention DP stays in one server."""
        return 1 if self.dp_attention else self.dp

    @property
    def total_gpus(self) -> int:
        """The seed's formula, total GPUs = TP x DP x PP (attention DP lives inside TP)."""
        return self.gpus_per_server * self.replicas


def _int_value(flag: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SpecError(f"{flag}: {raw!r} is not a whole number (e.g. {flag} 8)") from None
    if value < 1:
        raise SpecError(f"{flag}: must be at least 1, got {value}")
    return value


def _option_value(argv: Sequence[str], index: int) -> tuple[str, str, int]:
    """Split ``--flag=value`` or ``--flag value`` at ``index``; return flag, value, tokens used."""
    token = argv[index]
    if "=" in token:
        flag, value = token.split("=", 1)
        return flag, value, 1
    if index + 1 >= len(argv) or argv[index + 1].startswith("--"):
        raise SpecError(f"{token}: missing value (e.g. {token} 8)")
    return token, argv[index + 1], 2


def _flag_name(token: str) -> str:
    return token.split("=", 1)[0]


def find_option(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The value of the last occurrence of any of ``names`` in argv, as argparse keeps it."""
    found: str | None = None
    index = 0
    while index < len(argv):
        if _flag_name(argv[index]) in names:
            _, value, used = _option_value(argv, index)
            found = value
            index += used
        else:
            index += 1
    return found


def parse_parallelism(argv: Sequence[str]) -> Parallelism:
    """Read tp/pp/dp/ep/attention-DP from sglang arguments, long and short forms."""
    sizes = {key: 1 for key in PARALLEL_FLAGS}
    for key, names in PARALLEL_FLAGS.items():
        raw = find_option(argv, names)
        if raw is not None:
            sizes[key] = _int_value(names[0], raw)
    dp_attention = DP_ATTENTION_FLAG in argv or sizes["attn_dp"] > 1
    return Parallelism(dp_attention=dp_attention, **sizes)


def check_parallelism(par: Parallelism, nodes: int, gpus_per_node: int) -> list[str]:
    """The seed's rules against an allocation; each problem is one line with the arithmetic."""
    problems: list[str] = []
    if par.tp % par.ep:
        problems.append(
            f"--ep {par.ep} must divide --tp {par.tp}: EP subdivides the TP GPUs into EP groups"
        )
    if par.dp_attention and par.attn_dp > 1 and par.tp % par.attn_dp:
        problems.append(f"--attn-dp-size {par.attn_dp} must divide --tp {par.tp}")
    if par.dp_attention and par.dp > 1 and par.tp % par.dp:
        problems.append(f"--dp {par.dp} with --enable-dp-attention must divide --tp {par.tp}")
    capacity = nodes * gpus_per_node
    if gpus_per_node and par.total_gpus > capacity:
        problems.append(
            f"tp*pp*dp = {par.tp}*{par.pp}*{par.replicas} = {par.total_gpus} GPUs, but "
            f"{nodes} node(s) x {gpus_per_node} GPUs = {capacity}: ask for "
            f"{nodes_needed(par, gpus_per_node)} node(s) or lower the sizes"
        )
    server_nodes = servers_nodes(par, nodes)
    if server_nodes > 1 and par.gpus_per_server % server_nodes:
        problems.append(
            f"tp*pp = {par.gpus_per_server} must be divisible by the {server_nodes} nodes one "
            f"server spans (sglang needs (tp*pp) % nnodes == 0)"
        )
    if (
        gpus_per_node
        and server_nodes > 1
        and par.gpus_per_server // server_nodes > gpus_per_node
    ):
        problems.append(
            f"one server needs {par.gpus_per_server // server_nodes} GPUs on each of its "
            f"{server_nodes} nodes, more than the {gpus_per_node} a node has"
        )
    return problems


def servers_nodes(par: Parallelism, nodes: int) -> int:
    """How many nodes one sglang server spans: the whole allocation unless replicas split it."""
    if par.replicas <= 1:
        return nodes
    return max(1, nodes // par.replicas) if nodes >= par.replicas else 1


def nodes_needed(par: Parallelism, gpus_per_node: int) -> int:
    """Nodes the request needs: total GPUs over GPUs per node, rounded up."""
    if gpus_per_node <= 0:
        return 1
    return max(1, ceil(par.total_gpus / gpus_per_node))


class ServeSpec(BaseModel):
    """A validated serve request: sglang arguments plus the launcher's own settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sglang_args: tuple[str, ...]
    port: int = Field(default=30000, ge=1, le=65535)
    dist_port: int = Field(default=0, ge=0, le=65535)
    health_timeout: int = Field(default=1800, ge=1)
    image: str = ""
    nodes: int | None = Field(default=None, ge=1)

    @field_validator("sglang_args")
    @classmethod
    def _args(cls, argv: tuple[str, ...]) -> tuple[str, ...]:
        for position, arg in enumerate(argv, 1):
            if "\n" in arg or "\r" in arg or "\0" in arg:
                raise ValueError(
                    f"sglang argument {position} ({arg.splitlines()[0][:30]!r}...) contains a "
                    "newline or NUL; pass multi-line values through a file"
                )
        for token in argv:
            reason = RESERVED_FLAGS.get(_flag_name(token))
            if reason:
                raise ValueError(f"{_flag_name(token)} is set by the launcher: {reason}")
            if _flag_name(token) in SECRET_FLAGS:
                raise ValueError(SECRET_FLAGS[_flag_name(token)])
        if find_option(argv, MODEL_FLAGS) is None:
            raise ValueError("--model-path is required (e.g. --model-path Qwen/Qwen2.5-7B)")
        parse_parallelism(argv)
        return argv

    @property
    def model_path(self) -> str:
        """The model path or hub id given with --model-path."""
        return find_option(self.sglang_args, MODEL_FLAGS) or ""

    @property
    def parallelism(self) -> Parallelism:
        """Parallel sizes read from the sglang arguments."""
        return parse_parallelism(self.sglang_args)


def build_spec(sglang_args: Sequence[str], **settings: object) -> ServeSpec:
    """Validate a serve request; raises SpecError with one line per problem."""
    from pydantic import ValidationError

    try:
        return ServeSpec.model_validate({"sglang_args": tuple(sglang_args), **settings})
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"] if part != "sglang_args")
            message = str(error.get("ctx", {}).get("error", error["msg"]))
            prefix = f"--{field.replace('_', '-')}: " if field else ""
            lines.append(f"{prefix}{message}")
        raise SpecError("; ".join(lines)) from None
    except SpecError:
        raise
