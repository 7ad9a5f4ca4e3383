"""Download an http(s) input once into a cache, resuming a partial download, checking sha256.

    download("https://host/data/train.jsonl#sha256=9f2c...", cache_dir)  -> Path

The file lands at cache_dir/<16 hex of sha256(url)>-<file name>. While downloading, the
bytes go to "<that>.part"; a later call resumes from the part's size with an HTTP Range
request (a server that ignores Range answers 200 and the download restarts). Only a
complete file, whose sha256 matches when one is given in the URL's fragment, is renamed
into place, so the cache never holds a half or corrupt file under the final name.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mylm_jax.data.errors import DataError

CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, cache_dir: str | Path, timeout: float = 60.0) -> Path:
    address, _, fragment = url.partition("#")
    expected = fragment.removeprefix("sha256=").lower() if fragment.startswith("sha256=") else None
    name = Path(urllib.parse.urlparse(address).path).name or "download"
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"{hashlib.sha256(address.encode()).hexdigest()[:16]}-{name}"
    if final.exists() and (expected is None or _sha256(final) == expected):
        return final
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(address, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = response.status == 206
            with open(part, "ab" if resumed else "wb") as out:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part is already complete
            pass
        else:
            raise DataError(f"{address}: download failed (HTTP {e.code} {e.reason})") from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{address}: download failed ({getattr(e, 'reason', e)}); "
                        f"rerun to resume from {part.stat().st_size if part.exists() else 0} bytes") from None
    if expected is not None:
        actual = _sha256(part)
        if actual != expected:
            part.unlink()
            raise DataError(f"{address}: sha256 {actual} does not match the expected {expected}")
    os.replace(part, final)
    return final
