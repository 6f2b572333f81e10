"""Entry point for ``python -m slurm_sglang``."""

from slurm_sglang.cli import main

raise SystemExit(main())
