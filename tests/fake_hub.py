"""A Hugging Face hub double: serves one local folder as a model (or dataset) repo over HTTP
and records which files were downloaded (the parts of the hub API `snapshot_download` and
`datasets.load_dataset` use: revision info, the file tree, HEAD/GET of each file)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """``with FakeHub("org/name", folder) as hub:`` then point ``HF_ENDPOINT`` at ``hub.url``;
    ``repo_type="dataset"`` serves it as a dataset repo."""

    def __init__(self, repo_id: str, folder: Path, repo_type: str = "model"):
        self.repo_id, self.folder = repo_id, Path(folder)
        self.files_prefix = "" if repo_type == "model" else f"/{repo_type}s"  # /datasets/org/name/resolve/...
        self.api = f"/api/{repo_type}s/{repo_id}"
        self.downloaded: list[str] = []  # file names whose content was sent (GET)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _files(self) -> list[Path]:
        return [p for p in sorted(self.folder.rglob("*")) if p.is_file()]

    def _tree(self, under: str, recursive: bool) -> list[dict]:
        """The hub's tree listing of the folder ``under``: its files and folders (everything
        below it when ``recursive``)."""
        root = self.folder / under.strip("/")
        entries = sorted(root.rglob("*") if recursive else root.iterdir()) if root.is_dir() else []
        out = []
        for p in entries:
            rel = p.relative_to(self.folder).as_posix()
            if p.is_dir():
                out.append({"type": "directory", "path": rel, "oid": hashlib.sha1(rel.encode()).hexdigest()})
            else:
                out.append({"type": "file", "path": rel, "size": p.stat().st_size,
                            "oid": hashlib.sha1(p.read_bytes()).hexdigest()})
        return out

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj) -> None:
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _repo_file(self) -> Path | None:
                path = unquote(urlparse(self.path).path)
                prefix = f"{hub.files_prefix}/{hub.repo_id}/resolve/"
                if not path.startswith(prefix):
                    return None
                name = path[len(prefix):].split("/", 1)[-1]
                f = hub.folder / name
                return f if f.is_file() else None

            def _file(self, head: bool) -> None:
                f = self._repo_file()
                if f is None:
                    return self._send(404, head=head)
                data = f.read_bytes()
                self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'},
                           head=head)
                if not head:
                    hub.downloaded.append(f.relative_to(hub.folder).as_posix())

            def do_HEAD(self) -> None:
                self._file(head=True)

            def do_GET(self) -> None:
                path = urlparse(self.path).path
                api = hub.api
                if path.startswith(api + "/tree/"):  # tree/<revision>[/<folder>]
                    folder = unquote(path[len(api + "/tree/"):]).partition("/")[2]
                    return self._json(hub._tree(folder, "recursive=true" in urlparse(self.path).query.lower()))
                if path.startswith(api):
                    return self._json({"id": hub.repo_id, "sha": COMMIT, "siblings": [
                        {"rfilename": p.relative_to(hub.folder).as_posix()} for p in hub._files()]})
                if path.startswith("/api/"):
                    return self._send(404)
                self._file(head=False)

        return Handler
