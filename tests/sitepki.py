"""A site PKI made with the `openssl` command, as a site's own tooling would: CAs, server and client certificates
(also already expired ones), for the tests of the TLS listener."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str, *, days: str = "30") -> None:
    """A self-signed EC P-256 CA, `name`.pem and `name`.key in `d`."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            f"{name}.key", "-out", f"{name}.pem", "-days", days, "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_cert(d: Path, ca: str, name: str, *, server: bool, days: str = "10",
              dates: tuple[str, str] | None = None) -> None:
    """A certificate issued by `ca`; `dates` (start, end) through `openssl ca` for one that has expired."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" if server
                   else "extendedKeyUsage=clientAuth\n")
    if dates is None:
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", days, "-extfile", ext.name, cwd=d)
        return
    (d / "index.txt").write_text("")
    (d / "newcerts").mkdir(exist_ok=True)
    (d / "ca.cnf").write_text(f"""[ca]\ndefault_ca=c\n[c]\ndatabase=index.txt\nnew_certs_dir=newcerts\n
certificate={ca}.pem\nprivate_key={ca}.key\nserial=serial\ndefault_md=sha256\npolicy=p\ncopy_extensions=none\n
[p]\ncommonName=supplied\n""")
    (d / "serial").write_text("1000\n")
    openssl("ca", "-batch", "-config", "ca.cnf", "-in", f"{name}.csr", "-out", f"{name}.pem", "-notext",
            "-startdate", dates[0], "-enddate", dates[1], "-extfile", ext.name, cwd=d)
