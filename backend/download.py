"""`python -m backend download REPO_ID --dest DIR`: fetch a model from the Hugging Face hub into a folder.

Run by the QGIS plugin in the backend's own Python (huggingface_hub lives there, not in QGIS). Lines on
stdout, in the worker's message format (backend/contract.py) so one reader serves both:
    SIZE <bytes> <files>                        the size, stated before anything is fetched (`--size-only`
                                                stops here); the only line of its own
    PROGRESS <0..1> <bytes done>/<bytes> <text> while downloading
    DONE <files>                                every file is in DEST
    ERROR <text>                                something the user can act on (exit code 2), e.g. offline
Interrupted downloads resume. huggingface_hub gives the file list, sizes, checksums, the download URL and
the auth headers; the bytes are fetched here with HTTP range requests into DIR/.partial/, because recent
huggingface_hub versions write each attempt to a process-unique temporary file and delete it on failure,
so a download stopped by Cancel (the plugin terminates this process) or a dropped line would start over.
"""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlparse

from .contract import done_line, error_line, progress_line
from .errors import ModelNotFoundError, SocioSegError

MARKER = ".socioseg-download.json"
PARTIAL = ".partial"
CHUNK = 1 << 20
SPACE_MARGIN = 1 << 20      # left free beyond the download itself (the marker, the file system's own needs)
# When a repo has safetensors weights, the same weights in other formats are dead weight on disk.
DUPLICATE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf")


def _emit(line: str) -> None:
    print(line, flush=True)


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def check_online(endpoint: str) -> None:
    """Fail at once, with one short timeout (the same probe as model loading), instead of hanging in
    retries when there is no network."""
    from .hub import hub_reachable

    if _offline_env():
        raise ModelNotFoundError("offline: HF_HUB_OFFLINE is set, so nothing can be downloaded. Unset it, or "
                                 "download the model on a machine with internet access and enter its folder "
                                 "in Settings.")
    if not hub_reachable():
        raise ModelNotFoundError(f"offline: cannot reach {endpoint}. Connect to the internet and press Download "
                                 "again, or download the model elsewhere and enter its folder in Settings.")


def _network_errors() -> tuple:
    """Timeouts and dropped connections: requests' errors are OSErrors, httpx's (huggingface_hub >= 1) not."""
    errors: tuple = (OSError,)
    try:
        import httpx
        errors += (httpx.HTTPError,)
    except ImportError:
        pass
    return errors


@dataclass
class RemoteFile:
    name: str
    size: int
    sha256: str | None = None      # known for LFS files (the weights)


def plan(repo_id: str, revision: str | None = None) -> tuple[str, list[RemoteFile], list[str]]:
    """(commit, files to fetch, skipped duplicate-weight files) from the hub's file list."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, timeout=15)
    except GatedRepoError:
        raise ModelNotFoundError(f"{repo_id} needs an accepted licence and a Hugging Face token: accept it on "
                                 f"the model's page and run `huggingface-cli login` in the backend's Python.") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ModelNotFoundError(f"no model {repo_id!r} on the hub: check the model id in Settings.") from None
    except HfHubHTTPError as exc:
        raise ModelNotFoundError(f"the hub refused the file list of {repo_id}: {str(exc).splitlines()[0]}") from None
    except _network_errors() as exc:
        raise ModelNotFoundError(f"offline: the hub did not answer ({exc}). Try again later.") from None
    files = [RemoteFile(s.rfilename, int(s.size or 0), getattr(s.lfs, "sha256", None) if s.lfs else None)
             for s in info.siblings or []]
    skipped: list[str] = []
    if any(f.name.endswith(".safetensors") for f in files):
        skipped = [f.name for f in files if any(fnmatch.fnmatch(f.name, p) for p in DUPLICATE_WEIGHTS)]
        files = [f for f in files if f.name not in skipped]
    return info.sha or revision or "main", files, skipped


class _Progress:
    """Bytes done over all files, reported at most twice a second."""

    def __init__(self, total: int):
        self.total = max(total, 1)
        self.before = 0          # bytes of the files already finished
        self.current = 0         # bytes of the file in flight
        self.name = ""
        self.lock = threading.Lock()
        self.last = 0.0

    def start(self, name: str) -> None:
        with self.lock:
            self.name, self.current = name, 0
        self.report(force=True)

    def advance(self, n: int) -> None:
        with self.lock:
            self.current += n
        self.report()

    def finish(self, size: int) -> None:
        with self.lock:
            self.before += size
            self.current = 0

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.5:
            return
        self.last = now
        done = min(self.before + self.current, self.total)
        _emit(progress_line(done / self.total, done, self.total, f"{self.name}: {_gb(done)} of {_gb(self.total)}"))


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _ssl_context():
    try:
        import certifi     # QGIS's Pythons on Windows and macOS may lack system certificates
        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


def fetch_file(repo_id: str, commit: str, remote: RemoteFile, dest: str, progress: _Progress) -> None:
    """One file into dest/, continuing dest/.partial/<name>.part where an earlier attempt stopped."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    final = os.path.join(dest, remote.name)
    if os.path.isfile(final) and os.path.getsize(final) == remote.size:
        progress.advance(remote.size)
        return
    url = hf_hub_url(repo_id, remote.name, revision=commit)
    headers = build_hf_headers()
    meta = get_hf_file_metadata(url, timeout=15)
    location = meta.location or url
    if urlparse(location).netloc != urlparse(url).netloc:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}  # signed CDN URLs refuse it
    size = meta.size if meta.size is not None else remote.size
    part = os.path.join(dest, PARTIAL, remote.name + ".part")
    os.makedirs(os.path.dirname(part), exist_ok=True)
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if have > size:
        have = 0
    if have < size:
        request = urllib.request.Request(location, headers={**headers, "Accept-Encoding": "identity",
                                                            **({"Range": f"bytes={have}-"} if have else {})})
        with urllib.request.urlopen(request, timeout=30, context=_ssl_context()) as response:
            if have and response.status != 206:    # the server ignored the range: start this file over
                have = 0
            progress.advance(have)
            with open(part, "ab" if have else "wb") as f:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    progress.advance(len(chunk))
    else:
        progress.advance(have)
    got = os.path.getsize(part)
    if got != size:
        raise ModelNotFoundError(f"download of {remote.name} stopped at {got} of {size} bytes; press Download "
                                 "again to resume where it stopped.")
    if remote.sha256:
        progress.name = f"checking {remote.name}"
        progress.report(force=True)
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
        if digest.hexdigest() != remote.sha256:
            os.remove(part)
            raise ModelNotFoundError(f"{remote.name} arrived damaged (checksum mismatch) and was removed; press "
                                     "Download again.")
    os.replace(part, final)


def check_dest(dest: str) -> None:
    """`dest` is a folder or can become one (a file there, or above it, is named before any work)."""
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise ModelNotFoundError(f"--dest {dest} is a file, not a folder: give a folder to download into")
    parent = os.path.dirname(os.path.abspath(dest))
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ModelNotFoundError(f"--dest {dest}: {parent} is a file, not a folder; choose another --dest")


def _still_needed(dest: str, files: list[RemoteFile]) -> int:
    """Bytes still to fetch: files already whole in `dest` and the parts already fetched are not."""
    need = 0
    for f in files:
        final = os.path.join(dest, f.name)
        if os.path.isfile(final) and os.path.getsize(final) == f.size:
            continue
        part = os.path.join(dest, PARTIAL, f.name + ".part")
        have = os.path.getsize(part) if os.path.isfile(part) else 0
        need += max(0, f.size - have)
    return need


def _free_bytes(dest: str) -> int | None:
    folder = os.path.abspath(dest)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def check_space(dest: str, files: list[RemoteFile]) -> None:
    """Compare the free space with what is still to come before fetching a byte: a full disk half-way
    would otherwise look like a dropped download that Download-again could resume."""
    need, free = _still_needed(dest, files), _free_bytes(dest)
    if free is not None and need + SPACE_MARGIN > free:
        raise ModelNotFoundError(f"not enough disk space in {os.path.abspath(dest)}: the download needs "
                                 f"{_gb(need)} more and {_gb(free)} are free. Free {_gb(need + SPACE_MARGIN - free)} "
                                 "or choose another folder (--dest)")


def download(repo_id: str, dest: str, revision: str | None = None, size_only: bool = False) -> int:
    """Fetch every needed file of `repo_id` into `dest`; returns the number of files."""
    if not size_only:
        check_dest(dest)
    check_online(_endpoint())
    commit, files, skipped = plan(repo_id, revision)
    total = sum(f.size for f in files)
    _emit(f"SIZE {total} {len(files)}")
    if skipped:
        _emit(progress_line(0, 0, total, f"skipping {len(skipped)} duplicate weight file(s): {', '.join(skipped[:4])}"))
    if size_only:
        return len(files)
    check_space(dest, files)
    os.makedirs(dest, exist_ok=True)
    progress = _Progress(total)
    try:
        _fetch_all(repo_id, commit, files, dest, progress)
    finally:
        try:
            os.rmdir(os.path.join(dest, PARTIAL))    # only when empty: no part is waiting to be resumed
        except OSError:
            pass
    with open(os.path.join(dest, MARKER), "w", encoding="utf-8") as f:
        json.dump({"repo_id": repo_id, "commit": commit, "files": [r.name for r in files], "bytes": total}, f)
    progress.name = "done"
    progress.report(force=True)
    return len(files)


def _fetch_all(repo_id: str, commit: str, files: list[RemoteFile], dest: str, progress: _Progress) -> None:
    for remote in sorted(files, key=lambda f: f.size):     # small files first: a wrong repo shows early
        progress.start(remote.name)
        try:
            fetch_file(repo_id, commit, remote, dest, progress)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise _not_on_hub(repo_id, remote.name, commit) from None
            raise ModelNotFoundError(f"the hub refused {remote.name} (HTTP {exc.code} {exc.reason}); if the model "
                                     "is gated, accept its licence and log in with `huggingface-cli login`.") from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                free = _free_bytes(dest)
                raise ModelNotFoundError(
                    f"disk full while downloading {remote.name} into {os.path.abspath(dest)}"
                    + (f" ({_gb(free)} free)" if free is not None else "")
                    + f": free {_gb(_still_needed(dest, files))} or choose another folder (--dest); "
                    "what was fetched is kept and the download resumes from there") from None
            if exc.filename is not None and not _is_hub_error(exc):     # a local file problem, not the network
                raise ModelNotFoundError(f"cannot write {exc.filename or dest}: {exc.strerror}; choose another "
                                         "folder (--dest)") from None
            if _status(exc) == 404:
                raise _not_on_hub(repo_id, remote.name, commit) from None
            raise ModelNotFoundError(f"download of {remote.name} stopped ({str(exc).splitlines()[0] or exc!r}); "
                                     "press Download again to resume where it stopped.") from None
        except _network_errors() as exc:
            if _status(exc) == 404 or type(exc).__name__ in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
                raise _not_on_hub(repo_id, remote.name, commit) from None
            raise ModelNotFoundError(f"download of {remote.name} stopped ({str(exc).splitlines()[0] or exc!r}); "
                                     "press Download again to resume where it stopped.") from None
        progress.finish(remote.size)


def _status(exc) -> int | None:
    """The HTTP status of a hub or HTTP client error, where it has one."""
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None) if response is not None else None
    return code or getattr(exc, "status_code", None) or getattr(exc, "code", None)


def _is_hub_error(exc) -> bool:
    return getattr(exc, "response", None) is not None or type(exc).__module__.startswith(("huggingface_hub", "requests",
                                                                                          "httpx", "urllib3"))


def _not_on_hub(repo_id: str, name: str, commit: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"{name} is not on the hub for {repo_id} at revision {commit[:12]} (HTTP 404): "
                              "the model's file list names it but the hub has no such file there. Check the "
                              "model id and the revision (--revision); Download again will not help")


def main(args) -> int:
    try:
        files = download(args.repo_id, args.dest, args.revision, args.size_only)
    except SocioSegError as exc:
        _emit(error_line(str(exc)))
        return 2
    if not args.size_only:
        _emit(done_line(files))
    return 0

