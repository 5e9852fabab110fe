"""The local HTTP server of ``h2aseg view`` (stdlib :class:`~http.server.ThreadingHTTPServer`).

Security rule: it binds ``127.0.0.1`` only (there is no option to bind elsewhere), answers only requests
whose ``Host`` is ``127.0.0.1:<port>`` or ``localhost:<port>`` (a DNS-rebinding page cannot read it), and
serves nothing but

* ``/`` and ``/study/<case_id>``: the page (``static/index.html``); ``/static/<name>``: the files shipped
  in ``h2aseg/viewer/static`` (the page's script and style, the vendored NiiVue bundle and its licence);
* ``/api/studies`` (the study list) and ``/api/study/<case_id>`` (a study's volume URLs and lesion rows),
  JSON; ``/api/mip/<case_id>/<view>.png`` (``view``: ``coronal`` or ``sagittal``): the study's PET MIP
  drawn by the server (:meth:`Catalog.mip_png <h2aseg.viewer.catalog.Catalog.mip_png>`), ``image/png``;
* ``/files/<root>/<path>``: an image file (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``) inside the
  predictions, data or ground-truth folder given on the command line, checked by :func:`guarded_path`
  (``..``, absolute paths, backslashes and NUL refused with 403; the resolved path, symlinks followed,
  must stay inside the folder, else 403). Images go out as ``application/octet-stream``, their original
  bytes (NiiVue decompresses ``.nii.gz`` itself).

The page's Content-Security-Policy allows requests to the server itself only, so nothing is fetched from
anywhere else (no CDN) even by the vendored code.
"""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from h2aseg.data.io import image_suffix
from h2aseg.errors import H2ASegError
from h2aseg.viewer.catalog import MIP_VIEWS, Catalog

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
STATIC_DIR = Path(str(resources.files("h2aseg.viewer") / "static"))
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' data: blob:; worker-src 'self' blob:; font-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".txt": "text/plain; charset=utf-8"}  # fmt: skip


class Refused(Exception):
    """A request for a path the server must not serve; ``status`` is 403 or 404."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def guarded_path(root: Path, relative: str) -> Path:
    """The file ``relative`` (a decoded URL path) inside ``root``, or :class:`Refused`.

    403 for a path that is absolute, holds ``..``, a backslash or NUL, or resolves (symlinks followed)
    outside ``root``; 404 when it does not exist or is not a file.
    """
    if "\x00" in relative or "\\" in relative:
        raise Refused(HTTPStatus.FORBIDDEN, "NUL or backslash in the path")
    rel = PurePosixPath(relative)
    if rel.is_absolute() or relative.startswith("/") or (len(relative) > 1 and relative[1] == ":"):
        raise Refused(HTTPStatus.FORBIDDEN, "absolute path")
    if any(part in ("..", ".") for part in relative.split("/")):
        raise Refused(HTTPStatus.FORBIDDEN, "'..' in the path")
    root = root.resolve()
    try:
        resolved = (root / rel).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise Refused(HTTPStatus.NOT_FOUND, "no such file") from None
    except (OSError, RuntimeError):  # a symlink loop
        raise Refused(HTTPStatus.FORBIDDEN, "unresolvable path") from None
    if not resolved.is_relative_to(root):
        raise Refused(HTTPStatus.FORBIDDEN, "outside the served folder")
    if not resolved.is_file():
        raise Refused(HTTPStatus.NOT_FOUND, "not a file")
    return resolved


class ViewerServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` on ``127.0.0.1`` holding the :class:`Catalog` it serves."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, catalog: Catalog, port: int = DEFAULT_PORT, *, quiet: bool = True) -> None:
        self.catalog = catalog
        self.quiet = quiet
        self.problems: list[str] = []
        super().__init__((HOST, port), ViewerHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def allowed_hosts(self) -> set[str]:
        return {f"{HOST}:{self.port}", f"localhost:{self.port}"}

    def problem(self, message: str) -> None:
        """A request that failed on a study's file (answered 500): printed even when ``quiet``, and kept."""
        self.problems.append(message)
        sys.stderr.write(f"h2aseg view: {message}\n")


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "h2aseg-view"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    # ------------------------------------------------------------------------------------- dispatch
    def _answer(self, head: bool) -> None:
        try:
            if self.headers.get("Host", "") not in self.server.allowed_hosts():
                raise Refused(HTTPStatus.FORBIDDEN, "unexpected Host header")
            path = urlsplit(self.path).path
            if path == "/" or path.startswith("/study/"):
                self._send_file(STATIC_DIR / "index.html", head)
            elif path.startswith("/static/"):
                self._send_file(guarded_path(STATIC_DIR, unquote(path[len("/static/") :])), head)
            elif path == "/api/studies":
                self._send_json({"studies": self.server.catalog.study_list()}, head)
            elif path.startswith("/api/study/"):
                case_id = unquote(path[len("/api/study/") :])
                if case_id not in self.server.catalog.studies:
                    raise Refused(HTTPStatus.NOT_FOUND, "no such study")
                self._send_json(self.server.catalog.study(case_id), head)
            elif path.startswith("/api/mip/"):
                quoted_id, _, name = path[len("/api/mip/") :].rpartition("/")
                case_id, view = unquote(quoted_id), name.removesuffix(".png")
                if case_id not in self.server.catalog.studies:
                    raise Refused(HTTPStatus.NOT_FOUND, "no such study")
                if not name.endswith(".png") or view not in MIP_VIEWS:
                    raise Refused(HTTPStatus.NOT_FOUND, f"no such MIP (views: {', '.join(MIP_VIEWS)})")
                self._send_body(self.server.catalog.mip_png(case_id, view), "image/png", head)
            elif path.startswith("/files/"):
                key, _, rel = path[len("/files/") :].partition("/")
                root = self.server.catalog.roots.get(key)
                if root is None:
                    raise Refused(HTTPStatus.NOT_FOUND, "no such folder")
                file = guarded_path(root, unquote(rel))
                if not image_suffix(file):
                    raise Refused(HTTPStatus.FORBIDDEN, "only image files are served")
                self._send_file(file, head, content_type="application/octet-stream")
            else:
                raise Refused(HTTPStatus.NOT_FOUND, "no such page")
        except Refused as e:
            self._send_error(e.status, str(e), head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # e.g. an unreadable study file (the reader names it): a 500, keep serving
            reason = str(e) if isinstance(e, H2ASegError | OSError) else f"{type(e).__name__}: {e}"
            self.server.problem(f"{self.path}: {reason}")
            self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, reason, head)

    # ------------------------------------------------------------------------------------- replies
    def _headers(self, status: HTTPStatus, content_type: str, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def _send_file(self, file: Path, head: bool, content_type: str | None = None) -> None:
        ctype = content_type or _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0]
        with file.open("rb") as fh:  # opened before the headers go out: a failure can still be a 500
            self._headers(HTTPStatus.OK, ctype or "application/octet-stream", os.fstat(fh.fileno()).st_size)
            if not head:
                shutil.copyfileobj(fh, self.wfile)

    def _send_body(self, body: bytes, content_type: str, head: bool) -> None:
        self._headers(HTTPStatus.OK, content_type, len(body))
        if not head:
            self.wfile.write(body)

    def _send_json(self, obj: object, head: bool) -> None:
        self._send_body(json.dumps(obj, allow_nan=False).encode(), "application/json", head)

    def _send_error(self, status: HTTPStatus, reason: str, head: bool) -> None:
        body = json.dumps({"error": status.phrase, "reason": reason}).encode()
        self._headers(status, "application/json", len(body))
        if not head:
            self.wfile.write(body)


def make_server(
    pred: Path, data: Path, gt: Path | None = None, *, layout: str = "auto", port: int = DEFAULT_PORT
) -> ViewerServer:
    """The server for these folders on ``127.0.0.1:port`` (``port=0``: a free one), not yet serving."""
    return ViewerServer(Catalog(pred, data, gt, layout), port)
