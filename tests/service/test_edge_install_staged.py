"""`gptossctl install --listen ADDR:PORT --tls-cert F --tls-key F [--client-ca F]` into a staging tree through
the real CLI: the release record keeps the listener (never the key), the router's configuration and unit are
the edge's (graded by the real systemd-analyze and nginx -t), the key lands root-only, compliance renders the
router again from the record, a dry run names the open address, and bad input changes nothing (exit 2).
(A booted systemd serving TLS to the official client: tests/integration/test_edge_install.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gptossctl.adapters.systemd import Systemd
from gptossctl.install.layout import Layout
from gptossctl.install.release import read_release
from gptossctl.install.router import render_router_config
from tests.conftest import KeyPair
from tests.sitepki import make_ca, make_cert

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "site-ca", days="365")
    make_ca(d, "other-ca", days="365")
    make_cert(d, "site-ca", "server", server=True, days="90")
    make_cert(d, "other-ca", "stranger", server=True, days="90")
    return d


def _install(cli, bundle: Path, keys: dict[str, KeyPair], root: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("install", str(bundle), "--trust", str(keys["alice"].public), "--root", str(root),
               "--vllm-python", sys.executable, *extra)


def _tls(pki: Path, *, cert: str = "server", key: str = "server", ca: str | None = "site-ca") -> list[str]:
    return ["--tls-cert", str(pki / f"{cert}.pem"), "--tls-key", str(pki / f"{key}.key")] + \
        (["--client-ca", str(pki / f"{ca}.pem")] if ca else [])


def _files(root: Path) -> dict[str, bytes]:
    """Every file under the root but the audit log and its anchor (which record refusals too)."""
    audit = ("var/lib/gptossctl/", "var/log/gptoss/audit.")
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and not str(p.relative_to(root)).startswith(audit)}


def _router_files(root: Path) -> tuple[str, str]:
    return ((root / "opt/gptoss" / INSTANCE / "router.conf").read_text(),
            (root / f"etc/systemd/system/gptoss-router@{INSTANCE}.service").read_text())


def _grade(root: Path, unit: str) -> float:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", unit],
                         capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    return float(m.group(1))


def _nginx_t(root: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` of the router's configuration as install wrote it, the booted host's paths moved under the
    staging root (the credential, the runtime directory, /etc/gptoss, /var)."""
    run = tmp / "run"
    run.mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    text = (root / "opt/gptoss" / INSTANCE / "router.conf").read_text() \
        .replace(" /etc/gptoss/", f" {root}/etc/gptoss/").replace(" /var/", f" {root}/var/") \
        .replace(f" /run/credentials/gptoss-router@{INSTANCE}.service/api-key.map",
                 f" {root}/etc/gptoss/{INSTANCE}/router-key.map") \
        .replace(f" /run/gptoss-router/{INSTANCE}", f" {run}") \
        .replace("user gptoss-router;", "user nobody nogroup;")  # the user is in the staged tree's passwd only
    conf.write_text(text)
    return subprocess.run(["nginx", "-t", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True)


def test_install_with_listen_records_the_edge_and_renders_the_router_from_it(cli, bundle: Path, keys, pki: Path,  # type: ignore[no-untyped-def]
                                                                             tmp_path: Path) -> None:
    from gptossctl.install.router import router_config  # (the test module is collected on main too: failing first)

    root = tmp_path / "root"
    code, doc = _install(cli, bundle, keys, root, "--listen", "127.0.0.1:8443", *_tls(pki),
                         "--allow-from", "10.20.0.0/16")
    assert code == 0, json.dumps(doc, indent=1)[-3000:]
    assert doc["data"]["listen"]["host"] == "127.0.0.1" and "mutual TLS" in doc["data"]["open"]
    layout = Layout(root, INSTANCE)
    rec = read_release(layout.release(5))
    assert rec is not None and rec.edge is not None
    assert (rec.edge.host, rec.edge.port, rec.edge.allow, rec.edge.mutual_tls) == \
        ("127.0.0.1", 8443, ("10.20.0.0/16",), True)
    key_pem = (pki / "server.key").read_text()
    record_text = (layout.release(5) / "release.json").read_text()
    assert key_pem.strip().splitlines()[1] not in record_text  # digests of the files, never the key
    # The key and certificate root-only in the 0700 edge directory; consumers' includes ready for nginx.
    edge = root / "etc/gptoss" / INSTANCE / "edge"
    assert edge.stat().st_mode & 0o777 == 0o700
    for name in ("tls-key.pem", "tls-cert.pem", "client-ca.pem", "consumers.conf", "limits.conf"):
        assert (edge / name).stat().st_mode & 0o777 == 0o600, name
    assert (edge / "tls-key.pem").read_text() == key_pem
    # The router's configuration is the record's rendering: loopback HTTP as before, TLS on the address.
    conf, unit = _router_files(root)
    assert conf == router_config(Layout(Path("/"), INSTANCE), rec) == (layout.release(5) / "router.conf").read_text()
    assert "listen 127.0.0.1:8000;" in conf and "listen 127.0.0.1:8443 ssl;" in conf and "user gptoss-router;" in conf
    assert f"client_body_temp_path /var/lib/gptoss-router/{INSTANCE}/client_body;" in conf
    assert "ssl_verify_client on;" in conf and f"/etc/gptoss/{INSTANCE}/edge/tls-key.pem" in conf
    # The unit: a root master that may only drop to its workers, reaching loopback and the allowed peers.
    assert "DynamicUser=no\n" in unit and "CapabilityBoundingSet=CAP_SETUID CAP_SETGID\n" in unit
    assert "IPAddressAllow=localhost 10.20.0.0/16\n" in unit and "SystemCallFilter=@setuid\n" in unit
    assert "ReadWritePaths=/var/log/gptoss/edge /var/lib/gptoss-router/%i\n" in unit and "CAP_CHOWN" not in unit
    assert "gptoss-router:" in (root / "etc/passwd").read_text()  # sysusers.d, through systemd-sysusers --root
    assert (root / "etc/sysusers.d/gptoss-router.conf").is_file()
    assert f"systemctl reload gptoss-router@{INSTANCE}.service" in (root / "etc/logrotate.d/gptoss-edge").read_text()
    assert sorted(p.name for p in (root / "var/lib/gptoss-router" / INSTANCE).iterdir()) == \
        ["client_body", "fastcgi", "proxy", "scgi", "uwsgi"]
    # Graded: no worse than 2.0 (the loopback router's 1.3 is kept where there is no --listen).
    assert _grade(root, f"gptoss-router@{INSTANCE}.service") <= 1.9
    assert shutil.which("nginx"), "nginx is required (Debian package nginx-light; scripts/test.sh installs it)"
    res = _nginx_t(root, tmp_path)
    assert res.returncode == 0, res.stderr
    # Compliance renders the router again from the record: the listener, the peers and the unit pass ...
    code, report = cli("compliance", "check", "--root", str(root), "--instance", INSTANCE)
    checks = {c["id"]: c for c in report["data"]["checks"]}
    for rule in ("config.unit", "config.release_files", "config.bind", "config.offline", "config.exposure",
                 "edge.tls"):
        assert checks[rule]["status"] == "pass", (rule, checks[rule])
    # ... and a router opened wider than the record says fails it.
    running = root / "opt/gptoss" / INSTANCE / "router.conf"
    running.write_text(conf.replace("listen 127.0.0.1:8443 ssl;", "listen 0.0.0.0:8443 ssl;"))
    unit_path = root / f"etc/systemd/system/gptoss-router@{INSTANCE}.service"
    unit_path.write_text(unit.replace("IPAddressAllow=localhost 10.20.0.0/16", "IPAddressAllow=any"))
    code, report = cli("compliance", "check", "--root", str(root), "--instance", INSTANCE)
    checks = {c["id"]: c for c in report["data"]["checks"]}
    assert code == 1 and {r for r in ("config.unit", "config.release_files", "config.bind", "config.offline")
                          if checks[r]["status"] == "fail"} == {"config.unit", "config.release_files", "config.bind",
                                                                 "config.offline"}
    assert any("0.0.0.0:8443" in e for e in checks["config.bind"]["evidence"])


def test_without_listen_the_router_stays_loopback_only_byte_for_byte(cli, bundle: Path, keys,  # type: ignore[no-untyped-def]
                                                                     tmp_path: Path) -> None:
    root = tmp_path / "root"
    code, doc = _install(cli, bundle, keys, root)
    assert code == 0, doc
    rec = read_release(Layout(root, INSTANCE).release(5))
    assert rec is not None and rec.edge is None and doc["data"]["listen"] is None
    assert "edge" not in json.loads((Layout(root, INSTANCE).release(5) / "release.json").read_text())
    conf, unit = _router_files(root)
    live = Layout(Path("/"), INSTANCE)
    assert conf == render_router_config(instance=INSTANCE, host="127.0.0.1", port=8000, replicas=rec.replicas,
                                        key_map=Path(f"/run/credentials/gptoss-router@{INSTANCE}.service/api-key.map"),
                                        runtime=Path(f"/run/gptoss-router/{INSTANCE}"))
    assert "ssl" not in conf and "user " not in conf and live.instance == INSTANCE
    assert "DynamicUser=yes\n" in unit and "CapabilityBoundingSet=\n" in unit and "IPAddressAllow=localhost\n" in unit
    assert "# The network edge" not in unit and not (root / "etc/gptoss" / INSTANCE / "edge").exists()
    assert _grade(root, f"gptoss-router@{INSTANCE}.service") <= 1.3


def test_dry_run_names_the_address_it_would_open(cli, bundle: Path, keys, pki: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    code, doc = _install(cli, bundle, keys, root, "--dry-run", "--listen", "0.0.0.0:8443", *_tls(pki, ca=None))
    assert code == 0, doc
    steps = {s["step"]: s for s in doc["data"]["steps"]}
    assert steps["listen"]["detail"].startswith("0.0.0.0:8443 open to any peer (TLS 1.2/1.3)")
    assert steps["edge"]["status"] == "skipped" and "0.0.0.0:8443" in steps["edge"]["detail"]
    code, doc = _install(cli, bundle, keys, root, "--dry-run")
    assert code == 0 and doc["data"]["open"].startswith("loopback only")
    assert {s["step"]: s for s in doc["data"]["steps"]}["listen"]["detail"].startswith("loopback only")
    assert not (root / "opt").exists() and not (root / "etc/gptoss").exists()


BAD: dict[str, tuple[list[str], str]] = {
    "key of another certificate": (["--listen", "127.0.0.1:8443"], "install.tls_refused"),
    "not chained to the client CA": (["--listen", "127.0.0.1:8443"], "install.tls_refused"),
    "expired": (["--listen", "127.0.0.1:8443"], "install.tls_refused"),
    "no address": (["--listen", "somehost:8443"], "install.bad_listen"),
    "the router's own port": (["--listen", "127.0.0.1:8000"], "install.listen_conflict"),
    "a replica's port": (["--listen", "0.0.0.0:8001"], "install.listen_conflict"),
    "TLS without --listen": ([], "install.tls_without_listen"),
    "--listen without TLS": (["--listen", "127.0.0.1:8443"], "install.listen_needs_tls"),
    "bad --allow-from": (["--listen", "127.0.0.1:8443", "--allow-from", "10.0.0.0/99"], "install.bad_allow"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_edge_input_is_a_usage_error_and_changes_nothing(cli, bundle: Path, keys, pki: Path,  # type: ignore[no-untyped-def]
                                                            tmp_path: Path, case: str) -> None:
    extra, code_want = BAD[case]
    tls = {"key of another certificate": _tls(pki, key="stranger"),
           "not chained to the client CA": _tls(pki, ca="other-ca"),
           "--listen without TLS": []}.get(case, _tls(pki))
    if case == "expired":
        make_cert(pki, "site-ca", "expired", server=True, days="-1")
        tls = _tls(pki, cert="expired", key="expired")
    root = tmp_path / "root"
    root.mkdir()
    before = _files(root)
    code, doc = _install(cli, bundle, keys, root, *extra, *tls)
    assert code == 2 and doc["error"]["code"] == code_want, doc
    assert doc["error"]["hint"]
    if code_want == "install.tls_refused":
        assert doc["findings"] and doc["findings"][0]["code"].startswith("tls."), doc
    assert _files(root) == before


def test_a_failure_after_the_edge_step_puts_every_edge_file_back(pki: Path, tmp_path: Path) -> None:
    from gptossctl.install.listen import ListenRequest, edge_installed, load_edge

    layout = Layout(tmp_path / "root", INSTANCE)
    edge_dir = layout.etc / "edge"
    edge_dir.mkdir(parents=True)
    (edge_dir / "tls-cert.pem").write_text("the previous certificate\n")
    (edge_dir / "tls-cert.pem").chmod(0o644)
    edge = load_edge(ListenRequest("127.0.0.1:8443", pki / "server.pem", pki / "server.key", pki / "site-ca.pem"),
                     router_host="127.0.0.1", taken={8000})
    systemd = Systemd(layout.root)
    with pytest.raises(RuntimeError, match="health"), edge_installed(layout, systemd, edge, "k" * 43) as words:
        assert (edge_dir / "tls-key.pem").exists() and "server" in words
        raise RuntimeError("the new release failed its health check")
    assert sorted(p.name for p in edge_dir.iterdir()) == ["tls-cert.pem"]
    assert (edge_dir / "tls-cert.pem").read_text() == "the previous certificate\n"
    assert (edge_dir / "tls-cert.pem").stat().st_mode & 0o777 == 0o644
    assert not (layout.root / "etc/logrotate.d/gptoss-edge").exists()
    assert not (layout.root / "etc/sysusers.d/gptoss-router.conf").exists()



def test_consumers_sync_runs_before_each_compliance_check(cli, bundle: Path, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Rotated keys leave the router when their grace ends without an operator: the compliance service pulls in
    `consumers sync` (its own hardened unit, where consumers are managed) and orders itself after it."""
    root = tmp_path / "root"
    code, doc = _install(cli, bundle, keys, root)
    assert code == 0, doc
    units = root / "etc/systemd/system"
    sync = (units / "gptoss-consumers@.service").read_text()
    assert f"ExecStart={sys.executable} -m gptossctl consumers sync --instance %i --json\n" in sync
    assert "ConditionPathExists=/etc/gptoss/%i/consumers.json\n" in sync and "{{" not in sync
    compliance = (units / "gptoss-compliance@.service").read_text()
    assert "Wants=gptoss-consumers@%i.service\n" in compliance
    assert "After=gptoss-router@%i.service gptoss-consumers@%i.service\n" in compliance
    check = tmp_path / f"gptoss-consumers@{INSTANCE}.service"
    check.write_text(sync)
    res = subprocess.run(["systemd-analyze", "verify", str(check)], capture_output=True, text=True)
    assert res.returncode == 0 and "gptoss" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert _grade(root, f"gptoss-consumers@{INSTANCE}.service") <= 2.0
    # Compliance holds it to its rendering like the timer's own units.
    code, report = cli("compliance", "check", "--root", str(root), "--instance", INSTANCE)
    unit_check = {c["id"]: c for c in report["data"]["checks"]}["config.unit"]
    assert unit_check["status"] == "pass" and f"gptoss-consumers@{INSTANCE}.service" in unit_check["evidence"][1]
    (units / "gptoss-consumers@.service").write_text(sync.replace("CapabilityBoundingSet=\n",
                                                                  "CapabilityBoundingSet=CAP_SYS_ADMIN\n"))
    code, report = cli("compliance", "check", "--root", str(root), "--instance", INSTANCE)
    assert {c["id"]: c for c in report["data"]["checks"]}["config.unit"]["status"] == "fail"


def test_an_upgrade_keeps_the_listener_and_listen_none_closes_it(cli, bundle: Path, keys, pki: Path,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    root = tmp_path / "root"
    code, doc = _install(cli, bundle, keys, root, "--listen", "127.0.0.1:8443", *_tls(pki))
    assert code == 0, doc
    layout = Layout(root, INSTANCE)
    first = read_release(layout.release(5))
    assert first is not None and first.edge is not None
    # Installing again without --listen keeps the listener (as --replicas is kept): no outage by omission.
    code, doc = _install(cli, bundle, keys, root)
    assert code == 0, doc
    listen = {s["step"]: s for s in doc["data"]["steps"]}["listen"]["detail"]
    assert "127.0.0.1:8443" in listen and "kept as release 5 has it" in listen
    kept = read_release(layout.release(5))
    assert kept is not None and kept.edge == first.edge and "listen 127.0.0.1:8443 ssl;" in _router_files(root)[0]
    # --listen none goes back to loopback only: the router's files are the loopback router's again.
    code, doc = _install(cli, bundle, keys, root, "--listen", "none")
    assert code == 0, doc
    closed = read_release(layout.release(5))
    conf, unit = _router_files(root)
    assert closed is not None and closed.edge is None and " ssl;" not in conf and "DynamicUser=yes\n" in unit
    code, doc = _install(cli, bundle, keys, root, "--listen", "none", "--tls-cert", str(pki / "server.pem"))
    assert code == 2 and doc["error"]["code"] == "install.tls_without_listen"


def test_an_upgrade_refuses_a_swapped_listener_file_and_listen_none_removes_the_edge(  # type: ignore[no-untyped-def]
        cli, bundle: Path, keys, pki: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    code, doc = _install(cli, bundle, keys, root, "--listen", "127.0.0.1:8443", *_tls(pki))
    assert code == 0, doc
    edge = root / "etc/gptoss" / INSTANCE / "edge"
    sealed = (edge / "client-ca.pem").read_bytes()
    (edge / "client-ca.pem").write_bytes((pki / "other-ca.pem").read_bytes())  # mTLS would admit its certificates
    code, report = cli("compliance", "check", "--root", str(root), "--instance", INSTANCE)
    tls = {c["id"]: c for c in report["data"]["checks"]}["edge.tls"]
    assert tls["status"] == "fail" and "client-ca.pem" in " ".join(tls["evidence"]), tls
    before = _files(root)
    code, doc = _install(cli, bundle, keys, root)  # keeps the listener: would seal the swapped file
    assert code == 1 and doc["error"]["code"] == "install.edge_changed", doc
    assert "tls rotate" in doc["error"]["hint"] and _files(root) == before
    (edge / "client-ca.pem").write_bytes(sealed)
    code, doc = _install(cli, bundle, keys, root)
    assert code == 0, doc
    # --listen none: the edge's files (the TLS key, the includes holding the instance's key) and the logrotate
    # file go, audited; edge.tls is not applicable.
    code, doc = cli("consumers", "add", "alice", "--instance", INSTANCE, "--root", str(root),
                    "--out", str(tmp_path / "alice.key"))
    assert code == 0, doc
    code, doc = _install(cli, bundle, keys, root, "--listen", "none")
    assert code == 0, doc
    left = sorted(p.name for p in edge.iterdir())
    assert left == ["keys.json"] and not (root / "etc/logrotate.d/gptoss-edge").exists(), left  # consumers' own
    log = (root / "var/log/gptoss/audit.jsonl").read_text()
    assert "edge removed" in log
    code, report = cli("compliance", "check", "--root", str(root), "--instance", INSTANCE)
    tls = {c["id"]: c for c in report["data"]["checks"]}["edge.tls"]
    assert tls["status"] == "pass" and tls["evidence"][0].startswith("n/a"), tls
