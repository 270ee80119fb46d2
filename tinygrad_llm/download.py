"""Downloads: one resumable, verified file download, and the cache folder downloads go to.

Used for GPT-2's published weights (tinygrad_llm/weights.py), corpora given as URLs
(examples/pretrain.py) and datasets (the SMS Spam Collection of the classification example). Nothing in
the library downloads without being asked; every caller says where to get the file by hand when offline.
"""

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import safetensors
from tqdm.auto import tqdm

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
    """Download `url` to `dest` through `dest`.part, resuming an existing .part with an HTTP Range
    request. Verified before the atomic rename to `dest`: the size the server announced, the sha256
    (`sha256`, or the hub's X-Linked-Etag for LFS files), and that a .safetensors header or a .json file
    parses. A failed verification removes the .part (its bytes cannot be trusted) and raises
    DownloadError; a network error keeps it for the next try and is raised as it is."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "tinygrad-llm"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    redirects = _RememberLinkedHeaders()
    try:
        response = urllib.request.build_opener(redirects).open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:  # 416: the .part is already as long as the file, or longer
            raise
        part.unlink()
        return download_file(url, dest, sha256=sha256, timeout=timeout, progress=progress)
    with response:
        headers = response.headers  # case-insensitive lookups
        linked = {k: headers[k] for k in ("X-Linked-Etag", "X-Linked-Size") if headers.get(k)} | redirects.linked
        if response.status == 206:
            total = int(headers["Content-Range"].rsplit("/", 1)[1])
        else:  # 200: the whole file (the server ignored the Range)
            have = 0
            total = int(headers["Content-Length"]) if headers.get("Content-Length") else None
        total = int(linked.get("X-Linked-Size", total or 0)) or None
        etag = linked.get("X-Linked-Etag", "").removeprefix("W/").strip('"')
        sha256 = sha256 or (etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None)
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
        part.unlink()
        raise DownloadError(f"download of {url} failed verification ({problem}); removed {part}, try again")
    os.replace(part, dest)
    return dest


__all__ = ["DownloadError", "default_cache_dir", "download_file"]
