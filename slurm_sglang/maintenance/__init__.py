"""Maintenance scripts for the tables slurm-sglang ships (run by maintainers, not users)."""
