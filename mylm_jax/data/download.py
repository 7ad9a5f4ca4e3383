"""Download an http(s) input once into a cache, verified, resuming a partial download.

    download("https://host/data/train.jsonl#sha256=9f2c...", cache_dir)  -> Path

The file lands at cache_dir/<16 hex of sha256(url)>-<file name>. While downloading, the
bytes go to "<that>.part"; only a file that is verified complete is renamed into place,
so the cache never holds a half or corrupt file under the final name (and a later run
never mistakes one for the real thing). "Complete" means:

    - the server's length: Content-Length (or the total of a 206's Content-Range) must
      equal the bytes received. A connection that dies half way (a short body, or a
      chunked transfer cut off) is a "cut off" download, never a finished one;
    - the sha256 in the URL's fragment (#sha256=HEX), when given, must match.

A server that sends neither a length nor chunked framing (an HTTP/1.0 reply that ends by
closing the connection) cannot be checked: a cut-off looks exactly like the end of the
file. The file is then accepted with a note saying so; give #sha256=HEX to be sure.

Resuming: a cut-off download keeps its .part; the next attempt (up to `attempts` in one
call, and any later call) asks for the rest with an HTTP Range request. A server that
ignores Range answers 200 and the download restarts from zero. Refused connections,
HTTP errors (404, ...), cut-offs that persist and checksum mismatches are one-line
DataErrors.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mylm_jax.data.errors import DataError

CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class CutOff(Exception):
    """The connection ended before the server's announced length (internal: retried)."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def split_url(url: str) -> tuple[str, str | None]:
    """"https://h/x.jsonl#sha256=HEX" -> ("https://h/x.jsonl", "hex" or None)."""
    address, _, fragment = url.partition("#")
    if not fragment:
        return address, None
    expected = fragment.removeprefix("sha256=").lower()
    if not fragment.startswith("sha256=") or not _SHA256.fullmatch(expected):
        raise DataError(f"{url}: the URL's fragment must be #sha256= and 64 hex digits, got #{fragment}")
    return address, expected


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _reason(e) -> str:
    """An exception as a few words: "Connection refused", "timed out", "BadStatusLine"."""
    if isinstance(e, str):
        return e
    return getattr(e, "strerror", None) or str(e).strip() or type(e).__name__


def _fetch(address: str, part: Path, timeout: float) -> int | None:
    """One request: append the rest to `part` (or restart it). Returns the file's total
    size as the server announced it, or None when it announced none; raises CutOff."""
    have = _size(part)
    request = urllib.request.Request(address, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part is whole, or longer than the file
            m = re.fullmatch(r"bytes\s+\*/(\d+)", e.headers.get("Content-Range", "").strip())
            if m and int(m.group(1)) == have:
                return have
            part.unlink()  # the file on the server changed: start again
            raise CutOff("the file on the server changed since the partial download") from None
        raise DataError(f"{address}: download failed (HTTP {e.code} {e.reason})") from None
    with response:
        total = None
        if response.status == 206:
            m = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if not m or int(m.group(1)) != have:  # not the range we asked for: start again
                part.unlink()
                raise CutOff("the server answered the Range request with another range")
            if m.group(3) != "*":
                total = int(m.group(3))
            mode = "ab"
        else:  # 200: the whole file (a server that ignores Range restarts the download)
            have, mode = 0, "wb"
        length = response.headers.get("Content-Length", "").strip()
        if total is None and length.isdigit():
            total = have + int(length)
        with open(part, mode) as out:
            try:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (http.client.HTTPException, OSError) as e:  # a chunked transfer cut off, a reset
                        raise CutOff(f"the connection broke ({type(e).__name__})") from None
                    if not block:
                        break
                    out.write(block)  # an error here (a full disk) is not the network's: not retried
            finally:  # what arrived is kept for the next attempt
                out.flush()
                os.fsync(out.fileno())
    size = _size(part)
    if total is not None and size != total:
        raise CutOff(f"the connection closed at {size:,} of {total:,} bytes")
    return total


def download(url: str, cache_dir: str | Path, timeout: float = 60.0, attempts: int = 3) -> Path:
    """The cached, verified file for `url` (see the module docstring); DataError if it cannot be had."""
    address, expected = split_url(url)
    name = Path(urllib.parse.urlparse(address).path).name or "download"
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{cache_dir}: cannot create the download cache ({e.strerror})") from None
    final = cache_dir / f"{hashlib.sha256(address.encode()).hexdigest()[:16]}-{name}"
    if final.exists() and (expected is None or sha256_of(final) == expected):
        return final
    part = final.with_name(final.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            total = _fetch(address, part, timeout)
            break
        except CutOff as e:
            if attempt == attempts:
                raise DataError(f"{address}: download cut off ({e}) after {attempts} attempts; "
                                f"rerun to resume from the {_size(part):,} bytes kept in {part}") from None
        except urllib.error.URLError as e:  # refused, unknown host, ... (HTTPError is handled in _fetch)
            kept = f"; rerun to resume from {_size(part):,} bytes" if _size(part) else ""
            raise DataError(f"{address}: download failed ({_reason(e.reason)}){kept}") from None
        except (OSError, http.client.HTTPException) as e:  # a timeout, a garbled reply, a full disk
            raise DataError(f"{address}: download to {part} failed ({_reason(e)})") from None
    if expected is not None:
        actual = sha256_of(part)
        if actual != expected:
            part.unlink()
            raise DataError(f"{address}: sha256 {actual} does not match the expected {expected}")
    elif total is None:
        print(f"note: {address}: the server sent no length, so a cut-off download cannot be told from a "
              "complete one; add #sha256=HEX to the URL to check it", file=sys.stderr, flush=True)
    os.replace(part, final)
    return final
