"""A stand-in for the Hugging Face hub at HF_ENDPOINT, serving one tiny model (tests only).

It answers what huggingface_hub's snapshot_download asks (checked with huggingface_hub 1.33):
the revision (`/api/models/ORG/NAME/revision/REV`), the file tree
(`/api/models/ORG/NAME/tree/REV`) and each file (`HEAD`/`GET /ORG/NAME/resolve/REV/PATH`),
and counts the requests per path so a test can tell a download from a cache hit.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandin:
    """One repository of small files behind a local HTTP server; `url` is its HF_ENDPOINT."""

    def __init__(self, repo: str, files: dict[str, bytes], host: str = "127.0.0.1") -> None:
        self.repo = repo
        self.files = files
        self.requests: Counter[str] = Counter()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        """Serve one request: JSON for the API, bytes with the hub's headers for a file."""
        path = unquote(urlparse(handler.path).path)
        self.requests[f"{handler.command} {path}"] += 1
        api = f"/api/models/{self.repo}/"
        resolve = f"/{self.repo}/resolve/"
        if path.startswith(api + "revision/"):
            data = json.dumps({"id": self.repo, "modelId": self.repo, "sha": COMMIT,
                               "siblings": [{"rfilename": name} for name in self.files]})
            self._send(handler, 200, data.encode(), {"Content-Type": "application/json"}, body)
        elif path.startswith(api + "tree/"):
            data = json.dumps([{"type": "file", "path": name, "size": len(content),
                                "oid": hashlib.sha1(content).hexdigest()}
                               for name, content in self.files.items()])
            self._send(handler, 200, data.encode(), {"Content-Type": "application/json"}, body)
        elif path.startswith(resolve):
            name = path[len(resolve):].split("/", 1)[1]
            if name not in self.files:
                self._send(handler, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
                return
            content = self.files[name]
            self._send(handler, 200, content, {
                "X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
                "Content-Type": "application/octet-stream"}, body)
        else:
            self._send(handler, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, code: int, data: bytes, headers: dict[str, str],
              body: bool) -> None:
        handler.send_response(code)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(data)
