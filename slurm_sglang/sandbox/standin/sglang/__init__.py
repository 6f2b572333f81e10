"""A stand-in for sglang 0.5.23's `python3 -m sglang.launch_server`, for tests and the sandbox only.

It speaks sglang's flags, rendezvous across nodes and HTTP API with no GPU and no model; it is
never shipped as a server. Its /server_info carries `"standin": true`.
"""

__version__ = "0.5.23"
