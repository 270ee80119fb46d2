"""Downloads: one resumable, verified file download, and the cache folder downloads go to.

Used for GPT-2's published weights (tinygrad_llm/models/gpt2_weights.py), corpora given as URLs
(examples/pretrain.py) and datasets (the SMS Spam Collection of the classification example). Nothing in
the library downloads without being asked; every caller says where to get the file by hand when offline.
"""

import contextlib
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import safetensors
from tqdm.auto import tqdm

from autograd.checkpoint import write_text

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed verification (size, checksum, an unreadable file), or could not be made."""


def default_cache_dir():
    """$TINYGRAD_LLM_CACHE, else ~/.cache/tinygrad_llm: downloaded models, data and token caches."""
    return Path(os.environ.get("TINYGRAD_LLM_CACHE") or Path.home() / ".cache" / "tinygrad_llm")


class _RememberLinkedHeaders(urllib.request.HTTPRedirectHandler):
    """Follows redirects, keeping the hub's X-Linked-Etag / X-Linked-Size (an LFS file's sha256 and size,
    sent with the redirect to the storage server, not by the server itself)."""

    def __init__(self):
        self.linked = {}

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        for k in ("X-Linked-Etag", "X-Linked-Size"):
            if headers.get(k):
                self.linked[k] = headers[k]
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download_file(url, dest, *, sha256=None, timeout=30.0, progress=True):
    """Download `url` to `dest` through `dest`.part, resuming an interrupted download with an HTTP Range
    request. Returns `dest`.

    What is verified, before the atomic rename to `dest`: the size the server announced
    (Content-Length, Content-Range, or the hub's X-Linked-Size), the sha256 (`sha256`, or the hub's
    X-Linked-Etag for LFS files), and that a .safetensors header or a .json file parses. When the
    server announces no size and no checksum is known, there is nothing to verify the bytes against;
    such a download is accepted as it came, and is never resumed.

    Resuming: the expected size, the server's ETag and the checksum are recorded in `dest`.part.json
    when the download starts. A .part is resumed only when that record exists, names the same URL and
    knows the size (a .part of unknown origin is deleted, with a warning, and the download starts
    over); the request carries If-Range with the recorded ETag, so a file changed on the server comes
    whole. A server that ignores Range (200 instead of 206), or answers a different range or size,
    restarts the download cleanly.

    Errors: a connection that ends early (even cleanly) keeps the .part and its record and raises
    DownloadError saying to run again; a failed verification removes both (their bytes cannot be
    trusted) and raises DownloadError; a network error that prevents the request is raised as it is."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    record_path = dest.with_name(dest.name + ".part.json")
    record = _resumable_record(part, record_path, url)
    have = part.stat().st_size if record else 0
    request = urllib.request.Request(url, headers={"User-Agent": "tinygrad-llm"})
    if have:
        request.add_header("Range", f"bytes={have}-")
        if record.get("etag"):
            request.add_header("If-Range", record["etag"])
    redirects = _RememberLinkedHeaders()
    try:
        response = urllib.request.build_opener(redirects).open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:  # 416: the .part is already as long as the file, or longer
            raise
        _remove(part, record_path)
        return download_file(url, dest, sha256=sha256, timeout=timeout, progress=progress)
    with response:
        headers = response.headers  # case-insensitive lookups
        linked = {k: headers[k] for k in ("X-Linked-Etag", "X-Linked-Size") if headers.get(k)} | redirects.linked
        if response.status == 206:
            first, total = _content_range(headers.get("Content-Range", ""))
            if first != have or total != record["size"]:  # not the rest of the file we have: start over
                response.close()
                _remove(part, record_path)
                return download_file(url, dest, sha256=sha256, timeout=timeout, progress=progress)
        else:  # 200: the whole file (the server ignored the Range, or the file changed)
            have = 0
            total = int(headers["Content-Length"]) if headers.get("Content-Length", "").isdigit() else None
        total = int(linked.get("X-Linked-Size", total or 0)) or None
        etag = linked.get("X-Linked-Etag", "").removeprefix("W/").strip('"')
        sha256 = sha256 or (etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None) or (record or {}).get("sha256")
        if not have:
            write_text(record_path, json.dumps({"url": url, "size": total, "etag": headers.get("ETag"),
                                                "sha256": sha256}))
        digest = hashlib.sha256()
        if have:
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
            disable=not progress,
        ) as bar:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:  # the connection ended early: the bytes so far are good
        raise DownloadError(f"download of {url} was interrupted at {size} of {total} bytes; {part} is kept, "
                            "run again to resume")
    problem = None
    if total is not None and size != total:
        problem = f"size {size} bytes, expected {total}"
    elif sha256 is not None and digest.hexdigest() != sha256:
        problem = f"sha256 {digest.hexdigest()}, expected {sha256}"
    else:
        try:
            if dest.suffix == ".safetensors":
                with safetensors.safe_open(part, framework="numpy") as f:  # the package checks the header
                    f.keys()
            elif dest.suffix == ".json":
                json.loads(part.read_text(encoding="utf-8"))
        except (safetensors.SafetensorError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problem = f"unreadable: {e}"
    if problem:
        _remove(part, record_path)
        raise DownloadError(f"download of {url} failed verification ({problem}); removed {part}, try again")
    os.replace(part, dest)
    _remove(record_path)
    return dest


def _resumable_record(part, record_path, url):
    """The record of an interrupted download of `url` that may be resumed, or None. A .part without a
    trustworthy record (none, another URL, an unknown size, unreadable) is deleted: its bytes could be
    anything, and appending to them would make a file no check could catch when no checksum is known."""
    if not part.exists():
        _remove(record_path)
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        usable = (isinstance(record, dict) and record.get("url") == url and type(record.get("size")) is int
                  and part.stat().st_size < record["size"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        usable = False
    if usable:
        return record
    warnings.warn(f"{part}: not resuming a partial download with no record of its expected size from {url}; "
                  "downloading it again", stacklevel=3)
    _remove(part, record_path)
    return None


def _content_range(value):
    """(first byte, total size) of a Content-Range header "bytes 1000-4999/5000"; (None, None) if malformed."""
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", value.strip())
    return (int(m[1]), int(m[2])) if m else (None, None)


def _remove(*paths):
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


__all__ = ["DownloadError", "default_cache_dir", "download_file"]
