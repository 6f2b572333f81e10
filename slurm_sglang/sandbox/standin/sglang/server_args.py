"""sglang 0.5.23's common launch_server flags, with their real names, types, defaults and checks."""

from __future__ import annotations

import argparse
import json

from .standin_log import log

DEPRECATION_DATE = "2026-12-31"


class ServerArgsError(ValueError):
    """A flag combination sglang refuses after parsing (its validation hook)."""


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", "--model", type=str, required=True)
    parser.add_argument("--tokenizer-path", type=str, default=None)
    parser.add_argument("--tokenizer-mode", type=str, default="auto", choices=["auto", "slow"])
    parser.add_argument("--tokenizer-worker-num", type=int, default=1)
    parser.add_argument("--skip-tokenizer-init", action="store_true")
    parser.add_argument("--load-format", type=str, default="auto")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--dtype", type=str, default="auto")
    parser.add_argument("--kv-cache-dtype", type=str, default="auto")
    parser.add_argument("--quantization", type=str, default=None)
    parser.add_argument("--context-length", type=int, default=None)
    parser.add_argument("--revision", type=str, default=None)
    parser.add_argument("--served-model-name", type=str, default=None)
    parser.add_argument("--chat-template", type=str, default=None)
    parser.add_argument("--json-model-override-args", type=str, default="{}")
    parser.add_argument("--is-embedding", action="store_true")
    parser.add_argument("--download-dir", type=str, default=None)
    parser.add_argument("--device", type=str, default=None)


def _add_http_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", type=str, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--api-key", type=str, default=None)
    parser.add_argument("--skip-server-warmup", action="store_true")
    parser.add_argument("--warmups", type=str, default=None)
    parser.add_argument("--reasoning-parser", type=str, default=None)
    parser.add_argument("--tool-call-parser", type=str, default=None)
    parser.add_argument("--stream-interval", type=int, default=1)
    parser.add_argument("--enable-cache-report", action="store_true")


def _add_memory_and_scheduling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mem-fraction-static", type=float, default=None)
    parser.add_argument("--max-running-requests", type=int, default=None)
    parser.add_argument("--max-total-tokens", type=int, default=None)
    parser.add_argument("--chunked-prefill-size", type=int, default=None)
    parser.add_argument("--max-prefill-tokens", type=int, default=16384)
    parser.add_argument("--schedule-policy", type=str, default="fcfs")
    parser.add_argument("--schedule-conservativeness", type=float, default=1.0)
    parser.add_argument("--cuda-graph-max-bs", type=int, default=None)
    parser.add_argument("--disable-cuda-graph", action="store_true")
    parser.add_argument("--disable-radix-cache", action="store_true")
    parser.add_argument("--enable-mixed-chunk", action="store_true")
    parser.add_argument("--enable-torch-compile", action="store_true")
    parser.add_argument("--torch-compile-max-bs", type=int, default=32)
    parser.add_argument("--attention-backend", type=str, default=None)
    parser.add_argument("--sampling-backend", type=str, default=None)
    parser.add_argument("--grammar-backend", type=str, default=None)
    parser.add_argument("--random-seed", type=int, default=None)
    parser.add_argument("--watchdog-timeout", type=float, default=300)
    parser.add_argument("--speculative-algorithm", type=str, default=None)
    parser.add_argument("--speculative-draft-model-path", type=str, default=None)
    parser.add_argument("--speculative-num-steps", type=int, default=None)
    parser.add_argument("--speculative-eagle-topk", type=int, default=None)
    parser.add_argument("--speculative-num-draft-tokens", type=int, default=None)


def _add_parallel_flags(parser: argparse.ArgumentParser) -> None:
    # Declared in this order so that `--pp` lists its matches as sglang does.
    parser.add_argument("--tp-size", "--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--pp-async-batch-depth", type=int, default=0)
    parser.add_argument("--pp-max-micro-batch-size", type=int, default=None)
    parser.add_argument("--pp-size", "--pipeline-parallel-size", type=int, default=1)
    parser.add_argument("--dp-size", "--data-parallel-size", type=int, default=1)
    parser.add_argument("--attn-dp-size", type=int, default=1)
    parser.add_argument("--enable-dp-attention", action="store_true")
    parser.add_argument("--enable-dp-lm-head", action="store_true")
    parser.add_argument("--load-balance-method", type=str, default="auto")
    parser.add_argument("--ep-size", "--expert-parallel-size", "--ep", type=int, default=1)
    parser.add_argument("--moe-a2a-backend", type=str, default="none")
    parser.add_argument("--moe-runner-backend", type=str, default="auto")
    parser.add_argument(
        "--deepep-mode", type=str, default="auto", choices=["auto", "normal", "low_latency"]
    )
    parser.add_argument("--enable-eplb", action="store_true")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--dist-init-addr", "--nccl-init-addr", type=str, default=None)
    parser.add_argument("--dist-timeout", type=int, default=None)
    parser.add_argument("--nccl-port", type=int, default=None)
    parser.add_argument("--base-gpu-id", type=int, default=0)
    parser.add_argument("--gpu-id-step", type=int, default=1)
    parser.add_argument("--enable-p2p-check", action="store_true")


def _add_disaggregation_and_logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--disaggregation-mode", type=str, default="null", choices=["null", "prefill", "decode"]
    )
    parser.add_argument("--disaggregation-transfer-backend", type=str, default="mooncake")
    parser.add_argument("--disaggregation-bootstrap-port", type=int, default=8998)
    parser.add_argument("--disaggregation-ib-device", type=str, default=None)
    parser.add_argument("--log-level", type=str, default="info")
    parser.add_argument("--log-level-http", type=str, default=None)
    parser.add_argument("--log-requests", action="store_true")
    parser.add_argument("--log-requests-level", type=int, default=0)
    parser.add_argument("--enable-metrics", action="store_true")
    parser.add_argument("--show-time-cost", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    """Return launch_server's parser: abbreviations allowed, unknown flags refused (exit 2)."""
    parser = argparse.ArgumentParser(allow_abbrev=True)
    _add_model_flags(parser)
    _add_http_flags(parser)
    _add_memory_and_scheduling_flags(parser)
    _add_parallel_flags(parser)
    _add_disaggregation_and_logging_flags(parser)
    return parser


def translate_deprecated(args: argparse.Namespace) -> None:
    """Turn `--dp N --enable-dp-attention` into `--attn-dp-size N` with dp 1, warning as sglang."""
    if not args.enable_dp_attention:
        return
    log(
        "WARNING: --enable-dp-attention is deprecated and will be removed after "
        f"{DEPRECATION_DATE}; use --attn-dp-size {args.dp_size} instead "
        f"(translated: attn_dp_size={args.dp_size}, dp_size=1)."
    )
    if args.dp_size > 1:
        args.attn_dp_size = args.dp_size
        args.dp_size = 1


def validate(args: argparse.Namespace) -> None:
    """Apply sglang's post-parse checks; raise ServerArgsError with sglang's message."""
    for name in ("tp_size", "pp_size", "dp_size", "attn_dp_size", "ep_size", "nnodes"):
        if getattr(args, name) < 1:
            raise ServerArgsError(f"{name} must be a positive integer, got {getattr(args, name)}")
    if (args.tp_size * args.pp_size) % args.nnodes != 0:
        raise ServerArgsError(
            f"tp_size * pp_size ({args.tp_size} * {args.pp_size}) must be divisible by "
            f"nnodes ({args.nnodes})"
        )
    if args.dp_size > 1 and args.nnodes > 1:
        raise ServerArgsError(
            "multi-node data-parallel replicas are not supported; use attention DP "
            "(--attn-dp-size) across nodes"
        )
    if args.tp_size % args.attn_dp_size != 0:
        raise ServerArgsError(
            f"tp_size ({args.tp_size}) must be divisible by attn_dp_size ({args.attn_dp_size})"
        )
    if (args.nnodes > 1 or args.node_rank > 0) and not args.dist_init_addr:
        raise ServerArgsError("--dist-init-addr is required when --nnodes > 1")
    try:
        json.loads(args.json_model_override_args)
    except json.JSONDecodeError as error:
        raise ServerArgsError(f"--json-model-override-args is not valid JSON: {error}") from None


def parse_server_args(argv: list[str]) -> argparse.Namespace:
    """Parse, translate deprecated flags and validate, as sglang's prepare_server_args does."""
    args = build_parser().parse_args(argv)
    translate_deprecated(args)
    validate(args)
    return args


def served_model_name(args: argparse.Namespace) -> str:
    """The name /v1/models reports: --served-model-name, else --model-path."""
    name = args.served_model_name or args.model_path
    return str(name)


def describe(args: argparse.Namespace) -> str:
    """The `server_args=ServerArgs(...)` line sglang logs at start."""
    shown = {**vars(args), "api_key": "***" if args.api_key else None}
    fields = ", ".join(f"{key}={value!r}" for key, value in shown.items())
    return f"server_args=ServerArgs({fields})"
