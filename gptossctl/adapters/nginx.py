"""The router's binary: nginx from the operating system (Debian's nginx-light, RHEL's nginx)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

# Where distribution packages put it; a unit names an absolute path, so PATH is not consulted.
NGINX_PATHS = (Path("/usr/sbin/nginx"), Path("/usr/bin/nginx"), Path("/sbin/nginx"))


def find_nginx(root: Path = Path("/")) -> Path | None:
    """nginx as the target sees it (under a staging root when it is there, else on this host), or None."""
    for candidate in NGINX_PATHS:
        if (root / candidate.relative_to("/")).is_file() or candidate.is_file():
            return candidate
    return None


def nginx_test(binary: Path, text: str, *, runtime: str) -> tuple[bool, str]:
    """`nginx -t` of a configuration given as text: (valid, nginx's own words). The configuration's runtime
    directory (`runtime`, where the pid file and temporary files go) is moved into a scratch directory."""
    with tempfile.TemporaryDirectory(prefix="gptoss-nginx-") as scratch:
        conf = Path(scratch) / "nginx.conf"
        conf.write_text(text.replace(runtime, scratch))
        res = subprocess.run([str(binary), "-t", "-q", "-e", "stderr", "-c", str(conf)], capture_output=True,
                             text=True, timeout=60)
    return res.returncode == 0, (res.stderr or res.stdout).strip().replace(scratch, runtime)
