"""slurm-sglang: serve SGLang across the nodes of a SLURM cluster."""

__version__ = "0.1.0"
