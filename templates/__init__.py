"""The built-in templates, installed as the package ``slurm_sglang.templates``.

This file makes templates/ a regular package: setuptools' editable installs cannot import a
directory without one when pyproject.toml's package-dir maps it from outside slurm_sglang/
(pypa/setuptools#4943), while wheels could. With it, both find the templates the same way.
"""
