"""The network edge's pure parts: nginx rendering, the consumer registry, certificate checks, usage."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gptossctl.adapters.systemd import Systemd
from gptossctl.compliance.edge import check_tls
from gptossctl.compliance.evidence import ComplianceOptions, Evidence, read_chain
from gptossctl.errors import CheckFailed, UsageError
from gptossctl.install.consumers import (
    Consumer,
    KeyRecord,
    Registry,
    access_log,
    add_consumer,
    fingerprint,
    new_key,
    read_usage,
    sync_consumers,
    valid_keys,
)
from gptossctl.install.edge import (
    ConsumerKey,
    EdgeSettings,
    Limits,
    check_consumer_name,
    default_limits,
    render_consumer_includes,
    render_edge,
    render_logrotate,
)
from gptossctl.install.layout import Layout
from gptossctl.install.listen import prepare_edge_dirs
from gptossctl.install.release import EdgeRecord, ReleaseRecord, ReplicaRecord
from gptossctl.install.router import UPSTREAM, render_router_config
from gptossctl.install.serving import serving_set
from gptossctl.install.tls import check_certificate, public_key_sha256, rotate_certificate
from gptossctl.probe.usage import summarise

NOW = datetime(2026, 12, 1, tzinfo=UTC)
KEY_A = "sk-gptoss-" + "a" * 43
KEY_B = "sk-gptoss-" + "b" * 43
UP = "instance-key-" + "u" * 30


def _router(**kw: object) -> str:
    return render_router_config(instance="t", host="127.0.0.1", port=8000,
                                replicas=[ReplicaRecord(0, 8101), ReplicaRecord(1, 8102)],
                                key_map=Path("/run/k.map"), runtime=Path("/run/r"), down=(1,), **kw)  # type: ignore[arg-type]


def _edge(**kw: object) -> EdgeSettings:
    return EdgeSettings(host="10.0.0.5", port=443, edge_dir=Path("/etc/gptoss/t/edge"),
                        access_log=Path("/var/log/gptoss/edge-t.access.jsonl"), **kw)  # type: ignore[arg-type]


def test_router_without_edge_is_byte_for_byte_what_it_was() -> None:
    # SHA-256 of main's render_router_config for the same inputs, before the edge hook existed.
    assert hashlib.sha256(_router().encode()).hexdigest() == \
        "8151c4c1e92b72191d8cb34bc57c62da4b2c7eb3719879be2630442fad24dcc0"


def test_edge_renders_tls_limits_429_and_a_json_log_without_keys() -> None:
    text = _router(edge=render_edge(_edge(mutual_tls=True), upstream=UPSTREAM))
    assert "user gptoss-router;\n\nevents" in text
    assert "listen 10.0.0.5:443 ssl;" in text and "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert "listen 127.0.0.1:8000;" in text  # plain HTTP stays on loopback
    assert "ssl_verify_client on;" in text and "/etc/gptoss/t/edge/client-ca.pem" in text
    assert "escape=json" in text and '"consumer":"$gptoss_consumer"' in text and "$http_authorization\"" not in text
    assert "add_header Retry-After 1 always;" in text and '"type": "rate_limit_error"' in text
    assert "limit_req_status 429;" in text and "proxy_set_header X-Request-Id $request_id;" in text
    assert "proxy_set_header Authorization $gptoss_upstream_authorization;" in text
    assert text.count("{") == text.count("}")


def test_mutual_tls_off_renders_no_client_verification() -> None:
    assert "ssl_verify_client" not in render_edge(_edge(), upstream=UPSTREAM).http


def test_a_bad_worker_user_is_refused() -> None:
    with pytest.raises(UsageError):
        render_edge(_edge(worker_user="root;\nuser x"), upstream=UPSTREAM)


def test_consumer_includes_map_each_key_to_its_name_with_its_own_zones() -> None:
    http, server = render_consumer_includes(
        [ConsumerKey("alice", fingerprint(KEY_A), KEY_A), ConsumerKey("bob", fingerprint(KEY_B), KEY_B)],
        {"alice": Limits(2, 0, 3), "bob": Limits(10, 20, 5)}, upstream_key=UP)
    assert f'"~^Bearer {KEY_A}$" alice;' in http and f'"~^Bearer {KEY_B}$" bob;' in http
    assert "zone=gptoss_c_alice_req:1m rate=2r/s;" in http and "zone=gptoss_c_bob_req:1m rate=10r/s;" in http
    assert "limit_req zone=gptoss_c_alice_req;\nlimit_conn gptoss_c_alice_conn 3;" in server
    assert "limit_req zone=gptoss_c_bob_req burst=20 nodelay;" in server
    assert f'default "Bearer {UP}";' in http


@pytest.mark.parametrize("key", ["short", "sk-" + "a" * 40 + '" x;', "sk-" + "a" * 40 + "$", "ü" * 40])
def test_a_key_that_could_break_the_map_is_refused(key: str) -> None:
    with pytest.raises(UsageError):
        render_consumer_includes([ConsumerKey("alice", "f", key)], {}, upstream_key=UP)


@pytest.mark.parametrize("name", ["", "Alice", "-x", "a b", "a;", "_instance", "x" * 33, "a\nb"])
def test_bad_consumer_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        check_consumer_name(name)


def test_limits_bounds_and_defaults_from_sizing() -> None:
    assert default_limits(sizing_concurrency=8, max_num_seqs=64) == Limits(8, 16, 8)
    assert default_limits(sizing_concurrency=None, max_num_seqs=32, replicas=2) == Limits(64, 128, 64)
    for bad in ((0, 1, 1), (1, -1, 1), (1, 1, 0), (10**6, 1, 1)):
        with pytest.raises(UsageError):
            Limits(*bad)


def test_new_keys_are_unique_and_fit_the_map() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    render_consumer_includes([ConsumerKey("a", fingerprint(k), k) for k in keys], {}, upstream_key=UP)


def test_registry_round_trips_and_rotation_grace_and_revocation_decide_valid_keys() -> None:
    a1, a2, b = fingerprint(KEY_A), fingerprint(KEY_B), fingerprint(UP)
    reg = Registry("t", (
        Consumer("alice", NOW, Limits(1, 1, 1), (KeyRecord(a1, NOW, NOW + timedelta(hours=1)), KeyRecord(a2, NOW))),
        Consumer("bob", NOW, Limits(1, 1, 1), (KeyRecord(b, NOW),), revoked=NOW)))
    again = Registry.from_dict(json.loads(json.dumps(reg.to_dict())), "x")
    assert again == reg
    store = {a1: ("alice", KEY_A), a2: ("alice", KEY_B), b: ("bob", UP)}
    assert {k.fingerprint for k in valid_keys(reg, store, NOW)} == {a1, a2}
    assert {k.fingerprint for k in valid_keys(reg, store, NOW + timedelta(hours=2))} == {a2}
    assert KEY_A not in json.dumps(reg.to_dict())


@pytest.mark.parametrize("doc", [{}, {"schema": "gptossctl.consumers/2", "consumers": []},
                                 {"schema": "gptossctl.consumers/1", "consumers": [{"name": "x"}]},
                                 {"schema": "gptossctl.consumers/1", "consumers": [
                                     {"name": "BAD", "created": NOW.isoformat(), "limits": {"rps": 1, "burst": 1,
                                      "concurrency": 1}, "keys": []}]}])
def test_a_malformed_registry_is_a_finding_not_a_crash(doc: object) -> None:
    with pytest.raises(CheckFailed):
        Registry.from_dict(doc, "consumers.json")


# ---------------------------------------------------------------- certificates


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey, *,
          start: datetime, days: int, ca: bool = False) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(start + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return b.sign(signer, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki() -> dict[str, object]:
    ca_k, int_k, leaf_k, other_k = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    start = NOW - timedelta(days=10)
    ca = _cert("ca", ca_k, "ca", ca_k, start=start, days=3650, ca=True)
    inter = _cert("inter", int_k, "ca", ca_k, start=start, days=3650, ca=True)
    return {"ca": ca, "inter": inter, "leaf": _cert("leaf", leaf_k, "inter", int_k, start=start, days=100),
            "soon": _cert("leaf", leaf_k, "inter", int_k, start=start, days=20),
            "expired": _cert("leaf", leaf_k, "inter", int_k, start=start, days=5),
            "other_ca": _cert("ca", other_k, "ca", other_k, start=start, days=3650, ca=True),
            "leaf_k": leaf_k, "other_k": other_k}


def test_a_certificate_that_chains_through_intermediates_passes(pki: dict[str, object]) -> None:
    r = check_certificate(_pem(pki["leaf"], pki["inter"]), _key_pem(pki["leaf_k"]), _pem(pki["ca"]), now=NOW)  # type: ignore[arg-type]
    assert r.chain == ("CN=leaf", "CN=inter", "CN=ca (CA)") and not r.findings
    assert f" {int(r.not_after.timestamp())}\n" in r.prometheus("t")


def test_within_30_days_of_expiry_passes_with_a_warning(pki: dict[str, object]) -> None:
    r = check_certificate(_pem(pki["soon"], pki["inter"]), _key_pem(pki["leaf_k"]), _pem(pki["ca"]), now=NOW)  # type: ignore[arg-type]
    assert [f.code for f in r.findings] == ["tls.expires_soon"]


@pytest.mark.parametrize("case,code", [("expired", "tls.expired"), ("wrong_key", "tls.key_mismatch"),
                                       ("no_intermediate", "tls.untrusted_chain"), ("other_ca", "tls.untrusted_chain"),
                                       ("future", "tls.not_yet_valid")])
def test_certificate_failures(pki: dict[str, object], case: str, code: str) -> None:
    leaf, key, ca, now = [pki["leaf"], pki["inter"]], pki["leaf_k"], pki["ca"], NOW
    if case == "expired":
        leaf = [pki["expired"], pki["inter"]]
    elif case == "wrong_key":
        key = pki["other_k"]
    elif case == "no_intermediate":
        leaf = [pki["leaf"]]
    elif case == "other_ca":
        ca = pki["other_ca"]
    else:
        now = NOW - timedelta(days=30)
    with pytest.raises(CheckFailed) as err:
        check_certificate(_pem(*leaf), _key_pem(key), _pem(ca), now=now)  # type: ignore[arg-type]
    assert code in [f.code for f in err.value.findings]


def test_not_pem_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        check_certificate(b"junk", b"junk", b"junk")


# ---------------------------------------------------------------- usage


def _line(consumer: str, status: int, rt: float, t: str = "2026-12-01T10:00:00+00:00", route: str = "/v1/models") -> str:
    return json.dumps({"time": t, "consumer": consumer, "route": route, "status": str(status),
                       "request_time": str(rt), "bytes_sent": "100", "request_id": "r"})


def test_usage_counts_requests_errors_429s_and_latency_per_consumer() -> None:
    lines = [_line("alice", 200, 0.1), _line("alice", 200, 0.3), _line("alice", 429, 0.0), _line("alice", 500, 1.0),
             _line("bob", 200, 0.2, t="2026-12-02T10:00:00+00:00"), "not json", '{"time": "x"}', ""]
    s = summarise(lines, by="consumer")
    rows = {r.key: r for r in s.rows}
    assert (rows["alice"].requests, rows["alice"].errors, rows["alice"].limited) == (4, 1, 1)
    assert rows["alice"].p50_s == 0.3 and rows["alice"].p95_s == 1.0 and rows["alice"].tokens is None
    assert rows["bob"].requests == 1 and s.unreadable == 3
    assert [r.key for r in summarise(lines, by="day").rows] == ["2026-12-01", "2026-12-02"]
    since = summarise(lines, since=datetime(2026, 12, 2, tzinfo=UTC))
    assert [r.key for r in since.rows] == ["bob"]
    assert 'gptoss_usage_requests_total{consumer="alice"} 4' in s.prometheus()
    assert s.csv().splitlines()[1].startswith("alice,4,1,1,")


def _evidence(root: Path, now: datetime) -> Evidence:
    layout = Layout(root, "t")
    rec = ReleaseRecord(1, "b", "t", "p", "m", "0" * 64, "/usr/bin/python3")
    return Evidence(layout, Systemd(root), ComplianceOptions(), now, layout.release(1), rec, serving_set(layout, rec))


def test_compliance_checks_the_served_certificate(pki: dict[str, object], tmp_path: Path) -> None:
    ev = _evidence(tmp_path, NOW)
    assert check_tls(ev).status == "pass" and "loopback only" in check_tls(ev).evidence[0]  # no TLS listener
    d = tmp_path / "etc/gptoss/t/edge"
    rec = _install_edge(d, pki, client_ca=False)
    for cert, status in (("leaf", "pass"), ("soon", "warn"), ("expired", "fail")):
        (d / "tls-cert.pem").write_bytes(_pem(pki[cert], pki["inter"]))  # type: ignore[arg-type]
        sealed = dataclasses.replace(rec, cert_sha256=hashlib.sha256((d / "tls-cert.pem").read_bytes()).hexdigest())
        result = check_tls(dataclasses.replace(ev, rec=dataclasses.replace(ev.rec, edge=sealed)))
        assert result.status == status, result
    assert any("expired" in e for e in result.evidence)


def test_usage_reads_the_rotated_logs_too(tmp_path: Path) -> None:
    log = tmp_path / "edge-t.access.jsonl"
    log.write_text(_line("alice", 200, 0.1) + "\n")
    (tmp_path / "edge-t.access.jsonl.1").write_text(_line("alice", 200, 0.1) + "\n")
    (tmp_path / "edge-t.access.jsonl.2.gz").write_bytes(gzip.compress((_line("bob", 200, 0.1) + "\n").encode()))
    (tmp_path / "edge-t.access.jsonl.bak").write_text(_line("eve", 200, 0.1) + "\n")  # not logrotate's
    rows = {r.key: r.requests for r in read_usage(log, root=tmp_path, instance="t", since=None, by="consumer",
                                                   fmt="json").rows}
    assert rows == {"alice": 2, "bob": 1}
    assert f"{tmp_path}/edge-*.access.jsonl {{" in render_logrotate(tmp_path, instances=("t",))


# ---------------------------------------------------------------- review fixes (r4): the edge against its seal


def _install_edge(d: Path, pki: dict[str, object], *, client_ca: bool = True) -> EdgeRecord:
    """The listener's files as install lays them down, and the record that seals them."""
    d.mkdir(parents=True, exist_ok=True)
    files = {"tls-cert.pem": _pem(pki["leaf"], pki["inter"]), "tls-key.pem": _key_pem(pki["leaf_k"]),  # type: ignore[arg-type]
             "tls-ca.pem": _pem(pki["ca"])}  # type: ignore[arg-type]
    if client_ca:
        files["client-ca.pem"] = _pem(pki["ca"])  # type: ignore[arg-type]
    for name, data in files.items():
        (d / name).write_bytes(data)
    return EdgeRecord("10.0.0.5", 443, hashlib.sha256(files["tls-cert.pem"]).hexdigest(),
                      public_key_sha256(files["tls-key.pem"]),
                      hashlib.sha256(files["client-ca.pem"]).hexdigest() if client_ca else "")


def test_compliance_fails_a_listener_file_that_differs_from_the_record_or_is_missing(
        pki: dict[str, object], tmp_path: Path) -> None:
    d = tmp_path / "etc/gptoss/t/edge"
    rec = _install_edge(d, pki)
    ev = _evidence(tmp_path, NOW)
    ev = dataclasses.replace(ev, rec=dataclasses.replace(ev.rec, edge=rec))
    assert check_tls(ev).status == "pass", check_tls(ev)
    good = {p.name: p.read_bytes() for p in d.iterdir()}
    for name, bad in (("client-ca.pem", _pem(pki["other_ca"])),  # type: ignore[arg-type]  mTLS admits other certs
                      ("tls-key.pem", _key_pem(pki["other_k"])),  # type: ignore[arg-type]
                      ("tls-cert.pem", _pem(pki["soon"], pki["inter"])),  # type: ignore[arg-type]
                      ("client-ca.pem", None), ("tls-cert.pem", None), ("tls-key.pem", None)):
        if bad is None:
            (d / name).unlink()
        else:
            (d / name).write_bytes(bad)
        result = check_tls(ev)
        assert result.status == "fail" and "loopback" not in " ".join(result.evidence), (name, result)
        assert any(name in e for e in result.evidence), (name, result)
        (d / name).write_bytes(good[name])
    assert check_tls(ev).status == "pass"


def test_tls_rotate_seals_the_new_digests_and_compliance_compares_against_them(
        pki: dict[str, object], tmp_path: Path) -> None:
    layout = Layout(tmp_path, "t")
    rec = _install_edge(layout.etc / "edge", pki)
    src = tmp_path / "new"
    src.mkdir()
    (src / "cert.pem").write_bytes(_pem(pki["soon"], pki["inter"]))  # type: ignore[arg-type]
    (src / "key.pem").write_bytes(_key_pem(pki["leaf_k"]))  # type: ignore[arg-type]
    (src / "ca.pem").write_bytes(_pem(pki["ca"]))  # type: ignore[arg-type]
    rotate_certificate(layout, cert=src / "cert.pem", key=src / "key.pem", ca=src / "ca.pem",
                       reload=lambda _now: "reloaded", command=["tls", "rotate"])
    ev = _evidence(tmp_path, NOW)
    ev = dataclasses.replace(ev, rec=dataclasses.replace(ev.rec, edge=rec), chain=read_chain(layout))
    assert check_tls(ev).status == "warn", check_tls(ev)  # the rotated certificate, sealed: compared, in date
    (layout.etc / "edge/tls-ca.pem").unlink()  # the chain would go "not checked"
    result = check_tls(ev)
    assert result.status == "fail" and any("tls-ca.pem" in e for e in result.evidence), result


def test_no_edge_in_the_record_is_not_applicable_whatever_the_folder_holds(pki: dict[str, object],
                                                                            tmp_path: Path) -> None:
    _install_edge(tmp_path / "etc/gptoss/t/edge", pki)
    (tmp_path / "etc/gptoss/t/edge/tls-cert.pem").write_bytes(_pem(pki["expired"], pki["inter"]))  # type: ignore[arg-type]
    result = check_tls(_evidence(tmp_path, NOW))
    assert result.status == "pass" and "n/a" in result.evidence[0], result


@pytest.fixture(scope="module")
def sect163k1(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A real certificate on a curve OpenSSL knows and cryptography does not."""
    d = tmp_path_factory.mktemp("s163")
    subprocess.run(["openssl", "ecparam", "-name", "sect163k1", "-genkey", "-noout", "-out", str(d / "k.pem")],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-x509", "-new", "-key", str(d / "k.pem"), "-subj", "/CN=s163", "-days", "30",
                    "-out", str(d / "c.pem")], check=True, capture_output=True)
    return (d / "c.pem").read_bytes(), (d / "k.pem").read_bytes()


def test_an_unsupported_curve_is_a_usage_error_not_a_crash(pki: dict[str, object], sect163k1: tuple[bytes, bytes],
                                                            tmp_path: Path) -> None:
    cert, key = sect163k1
    good_cert, good_key = _pem(pki["leaf"], pki["inter"]), _key_pem(pki["leaf_k"])  # type: ignore[arg-type]
    for c, k, code in ((cert, good_key, "tls.bad_certificate"), (good_cert, key, "tls.bad_key")):
        with pytest.raises(UsageError) as err:
            check_certificate(c, k, _pem(pki["ca"]), now=NOW)  # type: ignore[arg-type]
        assert err.value.code == code
    with pytest.raises(UsageError) as err:  # an unsupported CA in the pool
        check_certificate(good_cert, good_key, cert, now=NOW)
    assert err.value.code == "tls.bad_certificate"
    d = tmp_path / "etc/gptoss/t/edge"
    rec = _install_edge(d, pki)
    (d / "tls-cert.pem").write_bytes(cert)
    ev = _evidence(tmp_path, NOW)
    assert check_tls(dataclasses.replace(ev, rec=dataclasses.replace(ev.rec, edge=rec))).status == "fail"


@pytest.mark.parametrize("field,value", [("host", "10.0.0.5:80 ssl; include /etc/shadow; listen 1"),
                                         ("host", "example.com"), ("port", 0), ("port", 70000),
                                         ("allow", ["10.0.0.0/8; deny"]), ("allow", ["bogus"]),
                                         ("cert_sha256", "x" * 64), ("key_sha256", "ab"),
                                         ("client_ca_sha256", "0" * 63)])
def test_a_damaged_edge_record_is_refused(field: str, value: object) -> None:
    good = EdgeRecord("10.0.0.5", 443, "a" * 64, "b" * 64, "", ("10.0.0.0/8",)).to_dict()
    assert EdgeRecord.from_dict(good) is not None
    assert EdgeRecord.from_dict(good | {"allow": ["any"]}) is not None
    assert EdgeRecord.from_dict(good | {"host": "::"}) is not None
    assert EdgeRecord.from_dict(good | {field: value}) is None


def test_logrotate_reloads_each_router_unit_and_never_signals_a_pid_from_a_file() -> None:
    text = render_logrotate(Path("/var/log/gptoss/edge"), instances=("a", "b"))
    assert "kill" not in text and "nginx.pid" not in text
    assert "systemctl reload gptoss-router@a.service" in text and "systemctl reload gptoss-router@b.service" in text


def test_the_access_log_lives_apart_from_the_audit_log(tmp_path: Path) -> None:
    layout = Layout(tmp_path, "t")
    assert access_log(layout) == tmp_path / "var/log/gptoss/edge/edge-t.access.jsonl"
    prepare_edge_dirs(layout)
    edge_logs = tmp_path / "var/log/gptoss/edge"
    assert edge_logs.is_dir() and edge_logs.stat().st_mode & 0o777 == 0o755
    text = render_logrotate(Path("/var/log/gptoss/edge"), instances=("t",))
    assert "/var/log/gptoss/edge/edge-*.access.jsonl {" in text


def test_consumers_sync_records_and_reloads_a_consumer_file_changed_by_hand(tmp_path: Path) -> None:
    layout = Layout(tmp_path, "t")
    layout.etc.mkdir(parents=True)
    layout.api_key.write_text(f"VLLM_API_KEY={UP}\n")
    reloads: list[bool] = []

    def reload(cut: bool) -> str:
        reloads.append(cut)
        return "reloaded"

    add_consumer(layout, "alice", limits=Limits(5, 10, 5), reload=reload, command=["consumers", "add", "alice"],
                 out=tmp_path / "alice.key")
    reloads.clear()
    sync_consumers(layout, reload=reload, command=["consumers", "sync"])
    assert reloads == []  # nothing changed: no reload, no entry
    entries = (tmp_path / "var/log/gptoss/audit.jsonl").read_text().splitlines()
    conf = layout.etc / "edge/consumers.conf"
    planted = "sk-planted-" + "p" * 40
    conf.write_text(conf.read_text().replace('    default "";\n', f'    default "";\n    "~^Bearer {planted}$" eve;\n'))
    sync_consumers(layout, reload=reload, command=["consumers", "sync"])
    assert planted not in conf.read_text() and reloads == [False]  # removed from disk and from the running nginx
    after = (tmp_path / "var/log/gptoss/audit.jsonl").read_text().splitlines()
    assert len(after) == len(entries) + 1 and "consumers.conf" in json.loads(after[-1])["detail"]
