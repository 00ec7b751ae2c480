"""Plain HTTPS downloads (httpx), for the few public files a pack fetches (the harmony vocab). Written to a
temporary name and renamed, so an interrupted download never looks finished."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from gptossctl.errors import ServiceUnavailable


def fetch(url: str, dest: Path, *, timeout: float = 60.0) -> None:
    import httpx

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as r:
            r.raise_for_status()
            with open(tmp, "wb") as f:
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        tmp.unlink(missing_ok=True)
        raise ServiceUnavailable(f"cannot download {url} from {urlparse(url).netloc}: {type(exc).__name__}",
                                 code="pack.download_failed",
                                 hint="on a host without access, set assets.tiktoken_dir to local copies") from None
    os.replace(tmp, dest)
