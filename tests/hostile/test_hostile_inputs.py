"""Hostile input, through the installed console script: every command, fed wrong, missing, binary, huge, deep,
overflowing and malicious input, must refuse cleanly.

For every case: exit 1, 2, 3 or 4 (never 70, never a crash), no traceback, exactly one JSON document whose
error says what to do next, and no state changed by the refusal (the staged install, the bundle, the output
paths are compared byte for byte before and after; only the audit log may grow, by design).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSPHRASE, KeyPair

pytestmark = pytest.mark.integration
GPTOSSCTL = Path(sys.executable).with_name("gptossctl")
REPO = Path(__file__).resolve().parents[2]
AUDIT = ("var/log/gptoss", "var/lib/gptossctl")  # the audit trail records refusals too, by design


@dataclass
class World:
    base: Path
    paths: dict[str, str] = field(default_factory=dict)

    def fmt(self, arg: str) -> str:
        return arg.format(**self.paths)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket goes: nothing listens there


def _write(p: Path, data: bytes | str) -> str:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(p)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, packed: Path, tiny_model: Path,
          keys: dict[str, KeyPair]) -> Iterator[World]:
    base = tmp_path_factory.mktemp("hostile")
    w = World(base)
    p = w.paths
    rnd = bytes((i * 7919 + 13) % 256 for i in range(1 << 16))  # deterministic binary garbage
    p["garbage"] = _write(base / "garbage.bin", rnd)
    p["empty"] = _write(base / "empty", b"")
    p["deepjson"] = _write(base / "deep.json", "[" * 200_000 + "]" * 200_000)
    p["deepyaml"] = _write(base / "deep.yaml", "[" * 50_000 + "]" * 50_000)
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    p["laughs"] = _write(base / "laughs.yaml", laughs)
    p["huge"] = _write(base / "huge.txt", b"x" * (64 << 20))
    p["listjson"] = _write(base / "list.json", "[1, 2, 3]")
    p["strjson"] = _write(base / "str.json", '"just a string"')
    p["numjson"] = _write(base / "num.json", "1e999999")
    p["rocm_wrong"] = _write(base / "rocm.json", json.dumps({"card0": ["not", "a", "dict"], "card1": 5}))
    p["rocm_types"] = _write(base / "rocm2.json", json.dumps({"card0": {"VRAM Total Memory (B)": {"x": 1},
                                                                       "Card series": ["MI300X"]}}))
    p["amd_wrong"] = _write(base / "amd.json", json.dumps({"gpu_data": [1, "x", None, {"vram": "big"}]}))
    p["amd_types"] = _write(base / "amd2.json", json.dumps({"gpu_data": [{"asic": "x", "vram": {"size": {
        "value": 10**400, "unit": "GB"}}}]}))
    p["csv_wrong"] = _write(base / "q.csv", "name, memory.total [MiB]\n" + "A100, 99999999999999999999999999 MiB\n")
    p["csv_cols"] = _write(base / "q2.csv", "name,memory.total\n" + ",".join(["x"] * 5000) + "\n")
    p["xml_deep"] = _write(base / "deep.xml", "<nvidia_smi_log>" + "<a>" * 100_000 + "</a>" * 100_000
                           + "</nvidia_smi_log>")
    p["xml_gpu_text"] = _write(base / "g.xml", "<nvidia_smi_log><gpu><minor_number>99999999999999999999999"
                               "</minor_number><fb_memory_usage><total>1 MiB</total></fb_memory_usage></gpu>"
                               "</nvidia_smi_log>")
    p["newline_name"] = str(base / "bad\nname")
    p["bundle"] = str(base / "bundle")
    shutil.copytree(packed, base / "bundle", symlinks=True)
    p["model"] = str(tiny_model)
    p["recipe"] = str(REPO / "bundles" / "tiny-demo.yaml")
    p["pub"], p["key"] = str(keys["alice"].public), str(keys["alice"].private)
    p["bobpub"] = str(keys["bob"].public)
    p["dir"] = str(base)
    p["missing"] = str(base / "does-not-exist")
    p["port"] = str(_closed_port())
    p["h100"] = str(REPO / "tests" / "data" / "h100-lease" / "h100-nvidia-smi-q.xml")
    # A staged install to run the service commands against (each refusal must leave it as it was).
    root = base / "root"
    r = subprocess.run([str(GPTOSSCTL), "install", p["bundle"], "--trust", p["pub"], "--root", str(root),
                        "--vllm-python", sys.executable, "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    p["root"] = str(root)
    p["apikey"] = str(root / "etc/gptoss/tiny-gpt-oss/api-key")
    p["release"] = str(root / "opt/gptoss/tiny-gpt-oss/releases/5")
    yield w


def _state(path: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under path (not following links): mode, size and content digest; the audit log aside."""
    if not path.exists() and not path.is_symlink():
        return {}
    if path.is_file() or path.is_symlink():
        st = path.lstat()
        return {"": (st.st_mode, st.st_size, _digest(path))}
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            q = Path(dirpath) / name
            rel = str(q.relative_to(path))
            if rel.startswith(AUDIT):
                continue
            st = q.lstat()
            out[rel] = (st.st_mode, st.st_size, _digest(q) if q.is_file() and not q.is_symlink() else "")
    return out


def _digest(p: Path) -> str:
    if p.is_symlink():
        return "-> " + os.readlink(p)
    return hashlib.sha256(p.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: frozenset[int] = frozenset({1, 2, 3, 4})
    env: tuple[tuple[str, str], ...] = ()
    watch: tuple[str, ...] = ()  # world paths that a refusal must leave untouched
    setup: Callable[[World, Path], dict[str, str]] | None = None  # extra placeholders, made in the case's tmp
    code: str | None = None  # the error code (or first finding's code) the refusal must carry


def C(id: str, *argv: str, expect: int | set[int] | None = None, env: dict[str, str] | None = None,
      watch: tuple[str, ...] = (), setup: Callable[[World, Path], dict[str, str]] | None = None,
      code: str | None = None) -> Case:
    exp = frozenset({1, 2, 3, 4}) if expect is None else frozenset({expect} if isinstance(expect, int) else expect)
    return Case(id, argv, exp, tuple((env or {}).items()), watch, setup, code)


# ---------------------------------------------------------------- set-ups that make broken state


def _root_copy(w: World, tmp: Path) -> Path:
    dst = tmp / "root"
    shutil.copytree(w.paths["root"], dst, symlinks=True)
    return dst


def _release_json(doc: str) -> Callable[[World, Path], dict[str, str]]:
    def make(w: World, tmp: Path) -> dict[str, str]:
        root = _root_copy(w, tmp)
        (root / "opt/gptoss/tiny-gpt-oss/releases/5/release.json").write_text(doc)
        return {"root2": str(root)}
    return make


def _trust_policy(doc: str) -> Callable[[World, Path], dict[str, str]]:
    """An instance as an older gptossctl left it (trust/policy.json, no trust root), with this policy.json."""
    def make(w: World, tmp: Path) -> dict[str, str]:
        root = _root_copy(w, tmp)
        etc = root / "etc/gptoss/tiny-gpt-oss"
        (etc / "trust-root.json").unlink()
        (etc / "trust").mkdir()
        (etc / "trust/policy.json").write_text(doc)
        return {"root2": str(root)}
    return make


def _signed_root_doc(mutate: Callable[[dict[str, Any]], Any] | None = None, *, payload: bytes | None = None,
                     bad_signature: bool = False) -> bytes:
    """A trust root envelope signed by alice: its document changed by `mutate`, or a raw payload."""
    import base64
    from datetime import UTC, datetime, timedelta

    from gptossctl.bundle.dsse import pae
    from gptossctl.bundle.keys import load_public_key, load_signing_key
    from gptossctl.bundle.trustroot import PAYLOAD_TYPE, new_root

    key = load_signing_key(Path(_KEYS["key"]), passphrase=lambda _p: PASSPHRASE)
    root = new_root([("alice", load_public_key(Path(_KEYS["pub"])))], 1, expires=datetime.now(UTC) + timedelta(days=9))
    if payload is None:
        doc = root.to_doc()
        if mutate is not None:
            mutate(doc)
        payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    if bad_signature:
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    return json.dumps({"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
                       "signatures": [{"keyid": key.keyid, "sig": base64.b64encode(sig).decode()}]}).encode()


_KEYS: dict[str, str] = {}  # alice's key files, filled in by the world fixture


def _root_doc(make: Callable[[], bytes]) -> Callable[[World, Path], dict[str, str]]:
    def setup(w: World, tmp: Path) -> dict[str, str]:
        _KEYS.update(key=w.paths["key"], pub=w.paths["pub"])
        return {"rootdoc": _write(tmp / "root.json", make()), "root2": str(_root_copy(w, tmp)),
                "fresh": str(tmp / "fresh")}
    return setup


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        d = doc
        for p in parents:
            d = d[p] if not isinstance(d, list) else d[int(p)]
        d[last] = value
    return mutate


def _audit_lines(text: str | bytes) -> Callable[[World, Path], dict[str, str]]:
    def make(w: World, tmp: Path) -> dict[str, str]:
        root = _root_copy(w, tmp)
        log = root / "var/log/gptoss/audit.jsonl"
        log.write_bytes(text.encode() if isinstance(text, str) else text)
        return {"root2": str(root)}
    return make


def _audit_cut(w: World, tmp: Path) -> dict[str, str]:
    root = _root_copy(w, tmp)
    (root / "var/log/gptoss/audit.jsonl").unlink()
    (root / "var/log/gptoss/audit.head").unlink()
    return {"root2": str(root)}


def _root_is_file(w: World, tmp: Path) -> dict[str, str]:
    return {"rootfile": _write(tmp / "rootfile", "not a directory\n")}


def _readonly_root(w: World, tmp: Path) -> dict[str, str]:
    ro = tmp / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    return {"ro": str(ro)}


def _bundle_variant(change: Callable[[Path], None]) -> Callable[[World, Path], dict[str, str]]:
    def make(w: World, tmp: Path) -> dict[str, str]:
        b = tmp / "b"
        shutil.copytree(w.paths["bundle"], b, symlinks=True)
        change(b)
        return {"b": str(b)}
    return make


def _recipe(text: str, files: dict[str, str] | None = None) -> Callable[[World, Path], dict[str, str]]:
    def make(w: World, tmp: Path) -> dict[str, str]:
        for name, body in (files or {}).items():
            _write(tmp / name, body)
        return {"r": _write(tmp / "recipe.yaml", text), "t": str(tmp)}
    return make


PROFILE = (REPO / "profiles" / "cpu-tiny.yaml").read_text()
RECIPE = (REPO / "bundles" / "tiny-demo.yaml").read_text()
SITE = RECIPE.replace("  - cpu-tiny\n", "  - ./site.yaml\n")


def _site_profile(edit: Callable[[str], str]) -> Callable[[World, Path], dict[str, str]]:
    return _recipe(SITE, {"site.yaml": edit(PROFILE.replace("name: cpu-tiny", "name: site"))})


def _signed_payload(rel: str, edit: Callable[[str], str]) -> Callable[[World, Path], dict[str, str]]:
    """A copy of the bundle with one payload file changed and the manifest signed again by the trusted key."""
    from tests.service.test_allowlists_staged import _edit_signed

    def make(w: World, tmp: Path) -> dict[str, str]:
        b = tmp / "b"
        shutil.copytree(w.paths["bundle"], b, symlinks=True)
        key, pub = Path(w.paths["key"]), Path(w.paths["pub"])
        # As the next version: the same version with other content is refused first (install.version_conflict).
        _edit_signed(b, rel, edit, KeyPair("alice", key, pub, KeyPair("alice", key, pub, "").signer().keyid),
                     version=6)
        return {"b": str(b)}
    return make


def _site_env(name: str) -> Callable[[World, Path], dict[str, str]]:
    return _site_profile(lambda t: t.replace('VLLM_CPU_KVCACHE_SPACE: "1"', f'VLLM_CPU_KVCACHE_SPACE: "1"\n    {name}: /tmp/x'))


def _site_flag(flag: str) -> Callable[[World, Path], dict[str, str]]:
    return _site_profile(lambda t: t.replace("    max-num-seqs: 4\n", f"    max-num-seqs: 4\n    {flag}: 1\n"))


CODE_LOADING_ENV = ("NCCL_NET_PLUGIN", "PYTHONPYCACHEPREFIX", "TRITON_LIBCUDA_PATH", "LD_AUDIT", "OPENSSL_CONF",
                    "HF_MODULES_CACHE")


def _model_with_link(target: str) -> Callable[[World, Path], dict[str, str]]:
    def make(w: World, tmp: Path) -> dict[str, str]:
        m = tmp / "model"
        shutil.copytree(w.paths["model"], m)
        (m / "tokenizer.json").unlink()
        (m / "tokenizer.json").symlink_to(target)
        return {"m": str(m)}
    return make


def _model_with_loop(w: World, tmp: Path) -> dict[str, str]:
    m = tmp / "model"
    shutil.copytree(w.paths["model"], m)
    (m / "loop").symlink_to("..")
    (m / "sub").mkdir()
    (m / "sub" / "up").symlink_to("../sub")
    return {"m": str(m)}


def _secret_file(w: World, tmp: Path) -> dict[str, str]:
    s = tmp / "root-only"
    s.write_text("secret\n")
    s.chmod(0o600)
    return {"secret": str(s)}


def _existing(w: World, tmp: Path) -> dict[str, str]:
    f = tmp / "existing.tar.gz"
    f.write_text("keep me\n")
    link = tmp / "link.tar.gz"
    link.symlink_to(tmp / "elsewhere.tar.gz")
    return {"existing": str(f), "link": str(link), "t": str(tmp)}


def _link_loop(w: World, tmp: Path) -> dict[str, str]:
    (tmp / "l1").symlink_to(tmp / "l2")
    (tmp / "l2").symlink_to(tmp / "l1")
    return {"loop": str(tmp / "l1")}


def _demo_target(w: World, tmp: Path) -> dict[str, str]:
    d = tmp / "precious"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work\n")
    return {"precious": str(d)}


def _suite(text: str) -> Callable[[World, Path], dict[str, str]]:
    return lambda w, tmp: {"s": _write(tmp / "suite.yaml", text)}


def _baseline(text: str) -> Callable[[World, Path], dict[str, str]]:
    return lambda w, tmp: {"bl": _write(tmp / "baseline.json", text)}


def _special_outputs(w: World, tmp: Path) -> dict[str, str]:
    """A copy of /dev/null (never the real one), a FIFO, a link and a plain folder to write reports into."""
    out = tmp / "out"
    out.mkdir()
    os.mknod(out / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(out / "fifo")
    (out / "link.json").symlink_to(out / "elsewhere.json")
    return {"dev": str(out / "null"), "fifo": str(out / "fifo"), "link": str(out / "link.json"), "o": str(out)}


INJECTION = "\nUser=root\nExecStartPre=+/bin/touch /pwned"


def _python_named(name: str) -> Callable[[World, Path], dict[str, str]]:
    """A real file whose path holds what ExecStart= would misread (a newline, a space, a %)."""
    def make(w: World, tmp: Path) -> dict[str, str]:
        d = tmp / name
        d.mkdir(parents=True)
        (d / "python").write_bytes(Path(sys.executable).read_bytes())
        (d / "python").chmod(0o755)
        return {"py": str(d / "python")}
    return make


def _injected_python_record(w: World, tmp: Path) -> dict[str, str]:
    """An installed release whose recorded interpreter (and so its unit) carries injected directives, as an
    install of the unfixed code left it: compliance must not call that unit 'the approved rendering'."""
    root = _root_copy(w, tmp)
    rel = root / "opt/gptoss/tiny-gpt-oss/releases/5"
    rec = json.loads((rel / "release.json").read_text())
    old, new = rec["python"], rec["python"] + INJECTION
    for unit in (rel / "unit-r0.service", root / "etc/systemd/system/gptoss@tiny-gpt-oss-r0.service"):
        unit.write_text(unit.read_text().replace(f"ExecStart={old} ", f"ExecStart={new} "))
    rec["python"] = new
    rec["rendered"]["unit-r0.service"] = hashlib.sha256((rel / "unit-r0.service").read_bytes()).hexdigest()
    (rel / "release.json").write_text(json.dumps(rec, indent=2) + "\n")
    return {"root2": str(root)}


def _audit_change(change: Callable[[Path], None]) -> Callable[[World, Path], dict[str, str]]:
    def make(w: World, tmp: Path) -> dict[str, str]:
        root = _root_copy(w, tmp)
        change(root)
        return {"root2": str(root)}
    return make


ANCHOR = "var/lib/gptossctl/audit.anchor"
LOGFILE = "var/log/gptoss/audit.jsonl"


def _replace(rel: str, make: Callable[[Path], object]) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        (root / rel).unlink()
        make(root / rel)
    return change


def _cut_and_hide(w: World, tmp: Path) -> dict[str, str]:
    """F4: a second entry (a refused install), then the log cut back to its first entry, the plain-text head
    rewritten to match, and the anchor deleted: the cut must still show."""
    root = _root_copy(w, tmp)
    subprocess.run([str(GPTOSSCTL), "install", w.paths["bundle"], "--trust", w.paths["pub"], "--root", str(root),
                    "--host", "0.0.0.0", "--vllm-python", sys.executable], capture_output=True, timeout=120)
    log = root / LOGFILE
    lines = log.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 2, "the set-up needs a log of two entries or more"
    log.write_bytes(lines[0])
    first = json.loads(lines[0])
    (root / "var/log/gptoss/audit.head").write_text(f"{first['seq']} {first['hash']}\n")
    (root / ANCHOR).unlink()
    return {"root2": str(root)}


def _small_disk(*, bundle: bool = False, fill: bool = True, read_only: bool = False
                ) -> Callable[[World, Path], dict[str, str]]:
    """A 2 MiB tmpfs (unmounted by the test), with a copy of the bundle and a key folder, then filled to the
    last byte (disk full) or remounted read-only; and a co-signing key outside it (not yet a signer)."""
    def make(w: World, tmp: Path) -> dict[str, str]:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        co = tmp / "co.key"
        co.write_bytes(Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        co.chmod(0o600)
        full = tmp / "full"
        full.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(full)], check=True)
        (full / "k").mkdir()
        if bundle:
            shutil.copytree(w.paths["bundle"], full / "b", symlinks=True)
        if fill:
            fd = os.open(full / "fill", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(full)], check=True)
        return {"full": str(full), "b": str(full / "b"), "co": str(co)}
    return make


def _marked_target(marker: str, *entries: str) -> Callable[[World, Path], dict[str, str]]:
    """F2: someone's folder holding a demo marker (copied, or written by hand) next to their own files."""
    def make(w: World, tmp: Path) -> dict[str, str]:
        d = tmp / "precious"
        d.mkdir()
        (d / ".gptossctl-demo").write_text(marker)
        for e in entries:
            _write(d / e, "years of work\n")
        return {"precious": str(d)}
    return make


DEMO_MARKER = "made by gptossctl demo: replaced by the next run\n"


def _root_with_link(rel: str) -> Callable[[World, Path], dict[str, str]]:
    """F3: a fresh staged root in which `rel` is an absolute link to a folder outside the root."""
    def make(w: World, tmp: Path) -> dict[str, str]:
        root, victim = tmp / "fresh", tmp / "victim"
        victim.mkdir()
        (victim / "keep.txt").write_text("not the installer's\n")
        (root / rel).parent.mkdir(parents=True)
        (root / rel).symlink_to(victim)
        return {"fresh": str(root), "victim": str(victim)}
    return make


def _split_parts(w: World, tmp: Path) -> dict[str, str]:
    parts = tmp / "parts"
    r = subprocess.run([str(GPTOSSCTL), "bundle", "split", w.paths["bundle"], "--out", str(parts), "--part-size",
                        "1108480"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return {"parts": str(parts)}


def _parts_and_roots(*, drop_part: bool = False) -> Callable[[World, Path], dict[str, str]]:
    """F12: the bundle as parts (one of them missing when asked), a copy of the staged root, and a fresh root
    whose opt/ must not appear."""
    def make(w: World, tmp: Path) -> dict[str, str]:
        paths = _split_parts(w, tmp)
        if drop_part:
            sorted(Path(paths["parts"]).glob("*.part"))[-1].unlink()
        root = _root_copy(w, tmp)
        fresh = tmp / "fresh"
        fresh.mkdir()
        return {**paths, "root2": str(root), "fresh": str(fresh), "fresh_opt": str(fresh / "opt")}
    return make


def _delta(w: World, tmp: Path) -> dict[str, str]:
    """A delta from the world's bundle (release 5) to a release 7 packed from the same model."""
    env = {**os.environ, "GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode(), "HF_HUB_OFFLINE": "1"}
    for argv in (["bundle", "pack", w.paths["recipe"], "--model-dir", w.paths["model"], "--out", str(tmp / "v7"),
                  "--key", w.paths["key"], "--version", "7"],
                 ["bundle", "delta", w.paths["bundle"], str(tmp / "v7"), "--out", str(tmp / "d")]):
        r = subprocess.run([str(GPTOSSCTL), *argv], capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
    return {"d": str(tmp / "d")}


def _rolled_forward(change: Callable[[Path], None]) -> Callable[[World, Path], dict[str, str]]:
    """F19: release 7 installed over the world's release 5, then release 5 changed on disk."""
    def make(w: World, tmp: Path) -> dict[str, str]:
        env = {**os.environ, "GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode(), "HF_HUB_OFFLINE": "1"}
        root = _root_copy(w, tmp)
        for argv in (["bundle", "pack", w.paths["recipe"], "--model-dir", w.paths["model"], "--out",
                      str(tmp / "v7"), "--key", w.paths["key"], "--version", "7"],
                     ["install", str(tmp / "v7"), "--trust", w.paths["pub"], "--root", str(root), "--vllm-python",
                      sys.executable]):
            r = subprocess.run([str(GPTOSSCTL), *argv], capture_output=True, text=True, timeout=300, env=env)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        change(root / "opt/gptoss/tiny-gpt-oss/releases/5")
        return {"root2": str(root)}
    return make


def _append(rel: str, data: bytes) -> Callable[[Path], None]:
    def change(release: Path) -> None:
        with open(release / rel, "ab") as f:
            f.write(data)
    return change


def _edit_record(release: Path) -> None:
    rec = json.loads((release / "release.json").read_text())
    rec["port"] = 22
    (release / "release.json").write_text(json.dumps(rec, indent=2) + "\n")


def _anchor_deleted_then_refusal(w: World, tmp: Path) -> dict[str, str]:
    """F4: the anchor deleted, then a later (refused) install appends an entry: it must not write a new anchor
    on top, which would hide the deletion."""
    root = _root_copy(w, tmp)
    (root / ANCHOR).unlink()
    subprocess.run([str(GPTOSSCTL), "install", w.paths["bundle"], "--trust", w.paths["pub"], "--root", str(root),
                    "--host", "0.0.0.0", "--vllm-python", sys.executable], capture_output=True, timeout=120)
    assert len((root / LOGFILE).read_text().splitlines()) >= 2
    return {"root2": str(root)}


def _audit_dirs(root: Path, broken: bool) -> dict[str, str]:
    """The root copy with its audit files exposed as watched paths (the harness skips them under a root)."""
    if broken:  # the newest entry cut off the end: verify calls it tampered, so a reset is allowed
        log = root / LOGFILE
        log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:-1]))
    return {"root2": str(root), "logdir": str(root / "var/log/gptoss"), "statedir": str(root / "var/lib/gptossctl")}


def _audit_broken(w: World, tmp: Path) -> dict[str, str]:
    return _audit_dirs(_root_copy(w, tmp), broken=True)


def _audit_intact(w: World, tmp: Path) -> dict[str, str]:
    return _audit_dirs(_root_copy(w, tmp), broken=False)


def _audit_reset_pending(w: World, tmp: Path) -> dict[str, str]:
    """A chain reset and not yet acknowledged."""
    out = _audit_broken(w, tmp)
    r = subprocess.run([str(GPTOSSCTL), "audit", "reset", "--reason", "test", "--yes", "--root", out["root2"]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    return out


def _audit_log_links_out(w: World, tmp: Path) -> dict[str, str]:
    """A broken log whose folder is a link out of the root: reset must not move or write anything there."""
    root = _root_copy(w, tmp)
    victim = tmp / "victim"
    shutil.move(str(root / "var/log/gptoss"), victim)
    (root / "var/log/gptoss").symlink_to(victim)
    (victim / "audit.jsonl").write_text("")
    return {"root2": str(root), "victim": str(victim)}


SUITE_HEAD = "schema: gptossctl.canary-suite/1\nname: x\nworkflows:\n  - name: w\n    cases:\n"
P = ("{pub}",)
ENV_PASS = {"GPTOSSCTL_KEY_PASSPHRASE": PASSPHRASE.decode()}

CASES: list[Case] = [
    # ------------------------------------------------------------ keys
    C("keys-generate-name-newline", "keys", "generate", "--out", "{dir}/k1", "--name", "ops\n", env=ENV_PASS,
      expect=2),
    C("keys-generate-name-traversal", "keys", "generate", "--out", "{dir}/k2", "--name", "../../etc/x",
      env=ENV_PASS, expect=2),
    C("keys-generate-name-huge", "keys", "generate", "--out", "{dir}/k3", "--name", "k" * 5000, env=ENV_PASS,
      expect=2),
    C("keys-generate-out-is-file", "keys", "generate", "--out", "{garbage}", "--name", "ops", env=ENV_PASS,
      expect=2),
    C("keys-show-binary", "keys", "show", "{garbage}", expect=2),
    C("keys-show-missing", "keys", "show", "{missing}", expect=2),
    C("keys-show-directory", "keys", "show", "{dir}", expect=2),
    C("keys-show-huge", "keys", "show", "{huge}", expect=2),
    # ------------------------------------------------------------ bundle verify / inspect / sign
    C("verify-no-trust", "bundle", "verify", "{bundle}", expect=2),
    C("verify-bundle-is-file", "bundle", "verify", "{garbage}", "--trust", *P, expect=2),
    C("verify-bundle-missing", "bundle", "verify", "{missing}", "--trust", *P, expect=2),
    C("verify-trust-binary", "bundle", "verify", "{bundle}", "--trust", "{garbage}", expect=2),
    C("verify-trust-private-key", "bundle", "verify", "{bundle}", "--trust", "{key}", expect=2),
    C("verify-trust-directory", "bundle", "verify", "{bundle}", "--trust", "{dir}", expect=2),
    C("verify-threshold-huge", "bundle", "verify", "{bundle}", "--trust", *P, "--threshold", "99999999999999999999",
      expect=2),
    C("verify-threshold-negative", "bundle", "verify", "{bundle}", "--trust", *P, "--threshold", "-1", expect=2),
    C("verify-clock-skew-overflow", "bundle", "verify", "{bundle}", "--trust", *P, "--clock-skew",
      "99999999999999999999d", expect=2),
    C("verify-clock-skew-garbage", "bundle", "verify", "{bundle}", "--trust", *P, "--clock-skew", "5 minutes",
      expect=2),
    C("verify-workers-huge", "bundle", "verify", "{bundle}", "--trust", *P, "--workers", "100000000", expect=2),
    C("verify-revoked-typo", "bundle", "verify", "{bundle}", "--trust", *P, "--revoked", "{dir}/alcie.pub", expect=2),
    C("verify-revoked-garbage-file", "bundle", "verify", "{bundle}", "--trust", *P, "--revoked", "{garbage}",
      expect=2),
    C("verify-min-version-huge", "bundle", "verify", "{bundle}", "--trust", *P, "--min-version",
      "99999999999999999999999", expect={1, 2}),
    C("verify-envelope-binary", "bundle", "verify", "{b}", "--trust", *P, expect=1,
      setup=_bundle_variant(lambda b: (b / "manifest.dsse.json").write_bytes(os.urandom(4096)))),
    C("verify-envelope-deep", "bundle", "verify", "{b}", "--trust", *P, expect=1,
      setup=_bundle_variant(lambda b: (b / "manifest.dsse.json").write_text("[" * 100_000 + "]" * 100_000))),
    C("verify-envelope-dir", "bundle", "verify", "{b}", "--trust", *P, expect=1,
      setup=_bundle_variant(lambda b: ((b / "manifest.dsse.json").unlink(), (b / "manifest.dsse.json").mkdir()))),
    C("verify-payload-is-file", "bundle", "verify", "{b}", "--trust", *P, expect=1,
      setup=_bundle_variant(lambda b: (shutil.rmtree(b / "payload"), (b / "payload").write_text("x")))),
    C("inspect-file", "bundle", "inspect", "{garbage}", expect=2),
    C("inspect-envelope-binary", "bundle", "inspect", "{b}", expect=1,
      setup=_bundle_variant(lambda b: (b / "manifest.dsse.json").write_bytes(os.urandom(512)))),
    C("sign-key-binary", "bundle", "sign", "{bundle}", "--key", "{garbage}", env=ENV_PASS, expect=2,
      watch=("bundle",)),
    C("sign-key-is-public", "bundle", "sign", "{bundle}", "--key", "{pub}", env=ENV_PASS, expect=2,
      watch=("bundle",)),
    C("sign-wrong-passphrase", "bundle", "sign", "{bundle}", "--key", "{key}",
      env={"GPTOSSCTL_KEY_PASSPHRASE": "wrong"}, expect=2, watch=("bundle",)),
    C("sign-no-passphrase", "bundle", "sign", "{bundle}", "--key", "{key}", env={"GPTOSSCTL_KEY_PASSPHRASE": ""},
      expect=3, watch=("bundle",)),
    # ------------------------------------------------------------ bundle pack
    C("pack-recipe-binary", "bundle", "pack", "{garbage}", "--out", "{dir}/p1", "--key", "{key}", env=ENV_PASS,
      expect=2),
    C("pack-recipe-empty", "bundle", "pack", "{empty}", "--out", "{dir}/p2", "--key", "{key}", env=ENV_PASS,
      expect=2),
    C("pack-recipe-deep", "bundle", "pack", "{deepyaml}", "--out", "{dir}/p3", "--key", "{key}", env=ENV_PASS,
      expect=2),
    C("pack-recipe-laughs", "bundle", "pack", "{laughs}", "--out", "{dir}/p4", "--key", "{key}", env=ENV_PASS,
      expect=2),
    C("pack-recipe-huge", "bundle", "pack", "{huge}", "--out", "{dir}/p5", "--key", "{key}", env=ENV_PASS,
      expect=2),
    C("pack-recipe-directory", "bundle", "pack", "{dir}", "--out", "{dir}/p6", "--key", "{key}", env=ENV_PASS,
      expect=2),
    C("pack-recipe-name-newline", "bundle", "pack", "{r}", "--out", "{t}/o", "--key", "{key}", "--model-dir",
      "{model}", env=ENV_PASS, expect=2, setup=_recipe(RECIPE.replace("name: tiny-demo", 'name: "tiny-demo\\n"'))),
    C("pack-recipe-expires-overflow", "bundle", "pack", "{r}", "--out", "{t}/o", "--key", "{key}", "--model-dir",
      "{model}", env=ENV_PASS, expect=2, setup=_recipe(RECIPE.replace("expires_in: 90d",
                                                                     "expires_in: 999999999999999999d"))),
    C("pack-expires-in-overflow", "bundle", "pack", "{recipe}", "--out", "{dir}/p7", "--key", "{key}", "--model-dir",
      "{model}", "--expires-in", "99999999999999999999w", env=ENV_PASS, expect=2),
    C("pack-version-overflow", "bundle", "pack", "{recipe}", "--out", "{dir}/p8", "--key", "{key}", "--model-dir",
      "{model}", "--version", "99999999999999999999999999", env=ENV_PASS, expect=2),
    C("pack-workers-huge", "bundle", "pack", "{recipe}", "--out", "{dir}/p9", "--key", "{key}", "--model-dir",
      "{model}", "--workers", "1000000000", env=ENV_PASS, expect=2),
    C("pack-out-exists", "bundle", "pack", "{recipe}", "--out", "{bundle}", "--key", "{key}", "--model-dir",
      "{model}", env=ENV_PASS, expect=2, watch=("bundle",)),
    C("pack-out-is-file", "bundle", "pack", "{recipe}", "--out", "{garbage}", "--key", "{key}", "--model-dir",
      "{model}", env=ENV_PASS, expect=2, watch=("garbage",)),
    C("pack-out-inside-model", "bundle", "pack", "{recipe}", "--out", "{m}/out", "--key", "{key}", "--model-dir",
      "{m}", env=ENV_PASS, expect=2, setup=lambda w, t: {"m": shutil.copytree(w.paths["model"], t / "m").as_posix()}),
    C("pack-model-dir-missing", "bundle", "pack", "{recipe}", "--out", "{dir}/p10", "--key", "{key}", "--model-dir",
      "{missing}", env=ENV_PASS, expect=2),
    C("pack-model-link-escapes", "bundle", "pack", "{recipe}", "--out", "{dir}/p11", "--key", "{key}",
      "--model-dir", "{m}", env=ENV_PASS, expect={1, 2}, setup=_model_with_link("/etc/shadow")),
    C("pack-model-link-loop", "bundle", "pack", "{recipe}", "--out", "{dir}/p12", "--key", "{key}", "--model-dir",
      "{m}", env=ENV_PASS, expect={1, 2}, setup=_model_with_loop),
    C("pack-key-missing", "bundle", "pack", "{recipe}", "--out", "{dir}/p13", "--key", "{missing}", "--model-dir",
      "{model}", env=ENV_PASS, expect=2),
    C("pack-no-key", "bundle", "pack", "{recipe}", "--out", "{dir}/p14", "--model-dir", "{model}", expect=2),
    C("pack-hub-unreachable", "bundle", "pack", "{recipe}", "--out", "{dir}/p15", "--key", "{key}", env={
        **ENV_PASS, "HF_ENDPOINT": "http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "0"}, expect=4),
    C("pack-hub-offline-mode", "bundle", "pack", "{recipe}", "--out", "{dir}/p16", "--key", "{key}",
      env={**ENV_PASS, "HF_HUB_OFFLINE": "1"}, expect={2, 4}),
    C("pack-site-profile-turns-offline-off", "bundle", "pack", "{r}", "--out", "{t}/o", "--key", "{key}",
      "--model-dir", "{model}", env=ENV_PASS, expect=2, setup=_site_profile(
          lambda t: t.replace('VLLM_CPU_KVCACHE_SPACE: "1"', 'VLLM_CPU_KVCACHE_SPACE: "1"\n    HF_HUB_OFFLINE: "0"'))),
    C("pack-site-profile-ld-preload", "bundle", "pack", "{r}", "--out", "{t}/o", "--key", "{key}",
      "--model-dir", "{model}", env=ENV_PASS, expect=2, setup=_site_profile(
          lambda t: t.replace('VLLM_CPU_KVCACHE_SPACE: "1"', 'VLLM_CPU_KVCACHE_SPACE: "1"\n    LD_PRELOAD: /tmp/x.so'))),
    C("pack-site-profile-lowercase-secret", "bundle", "pack", "{r}", "--out", "{t}/o", "--key", "{key}",
      "--model-dir", "{model}", env=ENV_PASS, expect=2, setup=_site_profile(
          lambda t: t.replace('VLLM_CPU_KVCACHE_SPACE: "1"', 'VLLM_CPU_KVCACHE_SPACE: "1"\n    my_api_key: x'))),
    *[C(f"pack-site-profile-env-{n.lower()}", "bundle", "pack", "{r}", "--out", "{t}/o", "--key", "{key}",
        "--model-dir", "{model}", env=ENV_PASS, expect=2, code="profile.invalid", setup=_site_env(n))
      for n in CODE_LOADING_ENV],
    C("pack-site-profile-abbreviated-flag", "bundle", "pack", "{r}", "--out", "{t}/o", "--key", "{key}",
      "--model-dir", "{model}", env=ENV_PASS, expect=2, code="profile.invalid", setup=_site_flag("max-model")),
    C("pack-site-profile-unknown-flag", "bundle", "pack", "{r}", "--out", "{t}/o", "--key", "{key}",
      "--model-dir", "{model}", env=ENV_PASS, expect=2, code="profile.invalid", setup=_site_flag("no-such-flag")),
    C("pack-site-profile-trust-remote-code", "bundle", "pack", "{r}", "--out", "{t}/o", "--key", "{key}",
      "--model-dir", "{model}", env=ENV_PASS, expect=2, code="profile.invalid", setup=_site_flag("trust-remote-code")),
    C("pack-site-profile-binary", "bundle", "pack", "{r}", "--out", "{t}/o", "--key", "{key}", "--model-dir",
      "{model}", env=ENV_PASS, expect=2, setup=_recipe(SITE, {"site.yaml": "\x00\xff\xfe binary"})),
    C("pack-site-profile-traversal", "bundle", "pack", "{r}", "--out", "{t}/o", "--key", "{key}", "--model-dir",
      "{model}", env=ENV_PASS, expect=2, setup=_recipe(RECIPE.replace("  - cpu-tiny\n", "  - ../../../etc/passwd\n"))),
    C("pack-unknown-unit-traversal", "bundle", "pack", "{r}", "--out", "{t}/o", "--key", "{key}", "--model-dir",
      "{model}", env=ENV_PASS, expect=2, setup=_recipe(RECIPE.replace("gptoss@.service", "../../../../etc/shadow"))),
    # ------------------------------------------------------------ carrying: split, join, copy, delta, apply
    C("split-part-size-garbage", "bundle", "split", "{bundle}", "--out", "{dir}/s1", "--part-size", "4X", expect=2),
    C("split-part-size-zero", "bundle", "split", "{bundle}", "--out", "{dir}/s2", "--part-size", "0", expect=2),
    C("split-part-size-overflow", "bundle", "split", "{bundle}", "--out", "{dir}/s3", "--part-size",
      "99999999999999999999999999G", expect=2),
    C("split-bundle-is-file", "bundle", "split", "{garbage}", "--out", "{dir}/s4", expect={1, 2}),
    C("split-out-exists", "bundle", "split", "{bundle}", "--out", "{dir}", expect=2, watch=("bundle",)),
    C("join-garbage-parts", "bundle", "join", "{t}", "--out", "{t}/o", expect={1, 2},
      setup=lambda w, t: {"t": str(t), "x": _write(t / "a.part", os.urandom(4096))}),
    C("join-nothing", "bundle", "join", "{missing}", "--out", "{dir}/j2", expect={1, 2}),
    C("copy-src-missing", "bundle", "copy", "{missing}", "{dir}/c1", expect={1, 2}),
    C("copy-dst-is-file", "bundle", "copy", "{bundle}", "{garbage}", expect={1, 2}, watch=("garbage",)),
    C("copy-rate-garbage", "bundle", "copy", "{bundle}", "{dir}/c3", "--limit-rate", "fast", expect=2),
    C("delta-same-bundle", "bundle", "delta", "{bundle}", "{bundle}", "--out", "{dir}/d1", expect=2),
    C("delta-old-garbage", "bundle", "delta", "{dir}", "{bundle}", "--out", "{dir}/d2", expect={1, 2}),
    C("apply-delta-garbage", "bundle", "apply", "{garbage}", "--base", "{bundle}", "--out", "{dir}/a1", expect={1, 2}),
    C("verify-part-garbage", "bundle", "verify", "{t}/x.part", "--trust", *P, expect={1, 2},
      setup=lambda w, t: {"t": str(t), "x": _write(t / "x.part", b"GPTOSSCTL-PART/1\n" + os.urandom(600))}),
    C("install-base-garbage", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--base", "{garbage}",
      "--vllm-python", sys.executable, "--port", "8123", expect={0, 1, 2}, watch=()),
    # ------------------------------------------------------------ hardware
    C("hw-xml-binary", "hw", "check", "--nvidia-smi-xml", "{garbage}", expect=2),
    C("hw-xml-deep", "hw", "check", "--nvidia-smi-xml", "{xml_deep}", expect={1, 2}),
    C("hw-xml-huge-number", "hw", "check", "--nvidia-smi-xml", "{xml_gpu_text}", expect={1, 2}),
    C("hw-xml-directory", "hw", "check", "--nvidia-smi-xml", "{dir}", expect=2),
    C("hw-csv-binary", "hw", "check", "--nvidia-smi-csv", "{garbage}", expect=2),
    C("hw-csv-overflow", "hw", "check", "--nvidia-smi-csv", "{csv_wrong}", expect={1, 2}),
    C("hw-csv-columns", "hw", "check", "--nvidia-smi-csv", "{csv_cols}", expect={1, 2}),
    C("hw-rocm-deep", "hw", "check", "--rocm-smi-json", "{deepjson}", expect=2),
    C("hw-rocm-list", "hw", "check", "--rocm-smi-json", "{listjson}", expect=2),
    C("hw-rocm-wrong-types", "hw", "check", "--rocm-smi-json", "{rocm_wrong}", expect=2),
    C("hw-rocm-wrong-types-2", "hw", "check", "--rocm-smi-json", "{rocm_types}", expect=2),
    C("hw-rocm-number", "hw", "check", "--rocm-smi-json", "{numjson}", expect=2),
    C("hw-amd-wrong-types", "hw", "check", "--amd-smi-json", "{amd_wrong}", expect=2),
    C("hw-amd-overflow", "hw", "check", "--amd-smi-json", "{amd_types}", expect={1, 2}),
    C("hw-amd-string", "hw", "check", "--amd-smi-json", "{strjson}", expect=2),
    C("hw-two-captures", "hw", "check", "--nvidia-smi-xml", "{garbage}", "--rocm-smi-json", "{garbage}", expect=2),
    C("hw-unknown-model", "hw", "check", "--model", "gpt-5\n", expect=2),
    C("hw-replicas-zero", "hw", "check", "--nvidia-smi-xml", "{h100}", "--replicas", "0", expect=2),
    C("hw-replicas-overflow", "hw", "check", "--nvidia-smi-xml", "{h100}", "--replicas", "99999999999999999999",
      expect=2),
    C("hw-tp-three", "hw", "check", "--nvidia-smi-xml", "{h100}", "--tp", "3", expect=2),
    C("hw-replicas-beyond", "hw", "check", "--nvidia-smi-xml", "{h100}", "--model", "gpt-oss-120b", "--replicas", "9",
      expect=1),
    C("hw-bundle-is-file", "hw", "check", "--bundle", "{garbage}", expect=2),
    C("hw-bundle-envelope-binary", "hw", "check", "--bundle", "{b}", expect={1, 2},
      setup=_bundle_variant(lambda b: (b / "manifest.dsse.json").write_bytes(os.urandom(512)))),
    C("profiles-list-prefix-file", "profiles", "list", "--model", "tiny", "--prefix", "{garbage}/x", expect={0, 1, 2, 3}),
    # The bundle's model is sized from its config.json: read against the manifest, parsed strictly, never guessed.
    C("hw-bundle-config-changed", "hw", "check", "--bundle", "{b}", expect=1, code="hw.bundle_damaged",
      setup=_bundle_variant(lambda b: (b / "payload/model/config.json").write_text('{"architectures": ["X"]}'))),
    C("hw-bundle-config-deep", "hw", "check", "--bundle", "{b}", expect=1, code="model.config_invalid",
      setup=_signed_payload("payload/model/config.json", lambda t: "[" * 100_000 + "]" * 100_000)),
    C("hw-bundle-config-duplicate-key", "hw", "check", "--bundle", "{b}", expect=1, code="model.config_invalid",
      setup=_signed_payload("payload/model/config.json", lambda t: t.replace("{", '{"num_hidden_layers": 2, ', 1))),
    C("hw-bundle-model-mismatch", "hw", "check", "--bundle", "{bundle}", "--model", "gpt-oss-120b", expect=2,
      code="hw.model_mismatch"),
    # ------------------------------------------------------------ install
    C("install-port-zero", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--port", "0", "--vllm-python",
      sys.executable, expect=2, watch=("root", "bundle")),
    C("install-port-overflow", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--port",
      "99999999999999999999", "--vllm-python", sys.executable, expect=2, watch=("root",)),
    C("install-port-change-refused-keeps-trust", "install", "{bundle}", "--trust", "{bobpub}", "--trust", *P,
      "--root", "{root}", "--port", "80", "--vllm-python", sys.executable, expect=2, watch=("root",)),
    C("install-signed-unit-template-differs", "install", "{b}", "--trust", *P, "--root", "{root}", "--vllm-python",
      sys.executable, expect=1, code="install.unit_template_differs", watch=("root",),
      setup=_signed_payload("payload/systemd/gptoss@.service",
                            lambda t: t.replace("[Service]\n", "[Service]\nExecStartPre=+/bin/true\n", 1))),
    *[C(f"install-signed-profile-env-{n.lower()}", "install", "{b}", "--trust", *P, "--root", "{root}",
        "--vllm-python", sys.executable, expect=2, code="profile.invalid", watch=("root",),
        setup=_signed_payload("payload/profiles/cpu-tiny.yaml", lambda t, n=n: t.replace(
            'VLLM_CPU_KVCACHE_SPACE: "1"', f'VLLM_CPU_KVCACHE_SPACE: "1"\n    {n}: /tmp/x'))) for n in CODE_LOADING_ENV],
    C("install-signed-config-not-gpt-oss", "install", "{b}", "--trust", *P, "--root", "{root}", "--vllm-python",
      sys.executable, expect=1, code="model.not_gpt_oss", watch=("root",),
      setup=_signed_payload("payload/model/config.json", lambda t: t.replace("GptOssForCausalLM", "Qwen2ForCausalLM"))),
    C("install-signed-config-huge-layers", "install", "{b}", "--trust", *P, "--root", "{root}", "--vllm-python",
      sys.executable, expect=1, code="model.config_invalid", watch=("root",),
      setup=_signed_payload("payload/model/config.json",
                            lambda t: t.replace('"num_hidden_layers": 2', '"num_hidden_layers": 1e400'))),
    # Another key on an installed instance changes its trust: refused as usage (trust changes by rotation only).
    C("install-untrusted", "install", "{bundle}", "--trust", "{bobpub}", "--root", "{root}", "--vllm-python",
      sys.executable, expect=2, code="trust.differs_from_root", watch=("root",)),
    C("install-untrusted-fresh", "install", "{bundle}", "--trust", "{bobpub}", "--root", "{fresh}",
      "--vllm-python", sys.executable, expect=1, code="signature.threshold_not_met",
      setup=lambda w, tmp: {"fresh": str(tmp / "fresh")}),
    C("install-instance-newline", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--instance", "x\n",
      "--vllm-python", sys.executable, expect=2, watch=("root",)),
    C("install-instance-traversal", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--instance",
      "../../etc", "--vllm-python", sys.executable, expect=2, watch=("root",)),
    C("install-host-public", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--host", "0.0.0.0",
      "--vllm-python", sys.executable, expect={1, 2}, watch=("root",)),
    C("install-health-timeout-overflow", "install", "{bundle}", "--trust", *P, "--root", "{root}",
      "--health-timeout", "99999999999999999999d", "--vllm-python", sys.executable, expect=2, watch=("root",)),
    C("install-root-is-file", "install", "{bundle}", "--trust", *P, "--root", "{rootfile}", "--vllm-python",
      sys.executable, expect={2, 3}, setup=_root_is_file),
    C("install-root-readonly", "install", "{bundle}", "--trust", *P, "--root", "{ro}", "--vllm-python",
      sys.executable, expect=3, setup=_readonly_root),
    C("install-bundle-is-file", "install", "{garbage}", "--trust", *P, "--root", "{root}", expect=2, watch=("root",)),
    C("install-unknown-profile", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--profile",
      "hopper-120b\n", "--vllm-python", sys.executable, expect=2, watch=("root",)),
    C("install-capture-binary", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--nvidia-smi-xml",
      "{garbage}", "--vllm-python", sys.executable, expect=2, watch=("root",)),
    C("install-vllm-python-missing", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--instance", "fresh",
      "--vllm-python", "{missing}", expect=2, watch=("root",)),
    C("install-python-is-garbage", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--instance", "fresh",
      "--python", "{garbage}", expect={1, 2, 3}, watch=("root",)),
    C("install-live-without-yes", "install", "{bundle}", "--trust", *P, expect={2, 3}),
    # ------------------------------------------------------------ status / rollback / uninstall / audit
    C("status-root-file", "status", "--root", "{rootfile}", expect={1, 2}, setup=_root_is_file),
    C("status-release-json-list", "status", "--root", "{root2}", expect=1, setup=_release_json("[1, 2]")),
    C("status-release-json-binary", "status", "--root", "{root2}", expect=1, setup=_release_json("\x00\xff")),
    C("status-instance-newline", "status", "--root", "{root}", "--instance", "tiny-gpt-oss\n", expect=2,
      watch=("root",)),
    C("rollback-nothing", "rollback", "--root", "{root}", expect=1, watch=("root",)),
    C("rollback-to-garbage", "rollback", "--root", "{root}", "--to", "99999999999999999999999", expect={1, 2},
      watch=("root",)),
    C("rollback-release-json-deep", "rollback", "--root", "{root2}", "--to", "5", expect={1, 2},
      setup=_release_json("[" * 100_000 + "]" * 100_000)),
    C("uninstall-unknown-instance", "uninstall", "--root", "{root}", "--instance", "nope", expect=1, watch=("root",)),
    C("uninstall-root-file", "uninstall", "--root", "{rootfile}", "--instance", "x", expect={1, 2},
      setup=_root_is_file),
    C("audit-garbage-lines", "audit", "verify", "--root", "{root2}", expect=1,
      setup=_audit_lines('{"seq": 1}\n[1,2]\n"x"\n\x00\xff\nnull\n')),
    C("audit-binary", "audit", "verify", "--root", "{root2}", expect=1, setup=_audit_lines(os.urandom(2048))),
    C("audit-deep", "audit", "verify", "--root", "{root2}", expect=1, setup=_audit_lines("[" * 100_000)),
    C("audit-log-and-head-deleted", "audit", "verify", "--root", "{root2}", expect=1, setup=_audit_cut),
    # ------------------------------------------------------------ compliance / support bundle
    C("compliance-release-json-list", "compliance", "check", "--root", "{root2}", expect=1,
      setup=_release_json("[]")),
    C("compliance-release-json-types", "compliance", "check", "--root", "{root2}", expect=1,
      setup=_release_json('{"version": "five", "port": "x", "host": ["a"], "gpus": 7}')),
    C("compliance-policy-wrong-types", "compliance", "check", "--root", "{root2}", expect=1,
      setup=_trust_policy('{"threshold": "two", "revoked": 5}')),
    C("compliance-policy-binary", "compliance", "check", "--root", "{root2}", expect=1,
      setup=_trust_policy("\x00\xff")),
    C("compliance-audit-cut", "compliance", "check", "--root", "{root2}", expect=1, setup=_audit_cut),
    C("compliance-sarif-is-directory", "compliance", "check", "--root", "{root}", "--sarif", "{dir}", expect=2),
    C("compliance-expiry-overflow", "compliance", "check", "--root", "{root}", "--expiry-warning",
      "99999999999999999999d", expect=2),
    C("compliance-max-exposure-nan", "compliance", "check", "--root", "{root}", "--max-exposure", "nan", expect=2),
    C("support-bundle-output-exists", "support-bundle", "--root", "{root}", "-o", "{existing}", expect=2,
      watch=("root",), setup=_existing),
    C("support-bundle-output-link", "support-bundle", "--root", "{root}", "-o", "{link}", expect=2,
      watch=("root",), setup=_existing),
    C("support-bundle-output-dir", "support-bundle", "--root", "{root}", "-o", "{dir}", expect=2, watch=("root",)),
    C("support-bundle-root-file", "support-bundle", "--root", "{rootfile}", expect={1, 2}, setup=_root_is_file),
    # ------------------------------------------------------------ smoke / canary
    C("smoke-unreachable", "smoke", "--url", "http://127.0.0.1:{port}", expect=4),
    C("smoke-url-garbage", "smoke", "--url", "not a url", expect=2),
    C("smoke-url-scheme", "smoke", "--url", "ftp://127.0.0.1/", expect=2),
    C("smoke-url-malformed", "smoke", "--url", "http://[::1", expect=2),
    C("smoke-key-binary", "smoke", "--url", "http://127.0.0.1:{port}", "--api-key-file", "{garbage}", expect=2),
    C("smoke-key-missing", "smoke", "--url", "http://127.0.0.1:{port}", "--api-key-file", "{missing}", expect=2),
    C("smoke-key-empty", "smoke", "--url", "http://127.0.0.1:{port}", "--api-key-file", "{empty}", expect=2),
    C("canary-unreachable", "canary", "run", "--url", "http://127.0.0.1:{port}", "--suite", "demo", expect=4),
    C("canary-suite-binary", "canary", "run", "--url", "http://127.0.0.1:{port}", "--suite", "{garbage}", expect=2),
    C("canary-suite-laughs", "canary", "run", "--url", "http://127.0.0.1:{port}", "--suite", "{laughs}", expect=2),
    C("canary-suite-deep", "canary", "run", "--url", "http://127.0.0.1:{port}", "--suite", "{deepyaml}", expect=2),
    # A catastrophic pattern for a backtracking engine: on RE2 it runs in linear time, so the suite is valid and
    # the run reaches the (closed) endpoint at once; a pattern RE2 cannot run is refused naming the case.
    C("canary-suite-redos", "canary", "run", "--url", "http://127.0.0.1:{port}", "--suite", "{s}", expect=4,
      setup=_suite(SUITE_HEAD + '      - {id: c, prompt: p, checks: [{regex: "(a+)+$"}]}\n')),
    C("canary-suite-backreference", "canary", "run", "--url", "http://127.0.0.1:{port}", "--suite", "{s}", expect=2,
      setup=_suite(SUITE_HEAD + '      - {id: c, prompt: p, checks: [{regex: "(a)\\\\1"}]}\n')),
    C("canary-suite-bad-schema", "canary", "run", "--url", "http://127.0.0.1:{port}", "--suite", "{s}", expect=2,
      setup=_suite(SUITE_HEAD + '      - {id: c, prompt: p, checks: [{json_schema: {type: 12}}]}\n')),
    C("canary-suite-remote-ref", "canary", "run", "--url", "http://127.0.0.1:{port}", "--suite", "{s}", expect=2,
      setup=_suite(SUITE_HEAD + '      - {id: c, prompt: p, checks: [{json_schema: {"$ref": "http://127.0.0.1:9/x"}}]}\n')),
    C("canary-baseline-binary", "canary", "run", "--url", "http://127.0.0.1:{port}", "--baseline", "{garbage}",
      expect=2),
    C("canary-baseline-list", "canary", "run", "--url", "http://127.0.0.1:{port}", "--baseline", "{listjson}",
      expect=2),
    C("canary-baseline-deep", "canary", "run", "--url", "http://127.0.0.1:{port}", "--baseline", "{deepjson}",
      expect=2),
    C("canary-baseline-wrong-types", "canary", "run", "--url", "http://127.0.0.1:{port}", "--baseline", "{bl}",
      expect=2, setup=_baseline('{"schema": "gptossctl.canary-report/1", "latency_ms": "fast", "safety": 3}')),
    C("canary-concurrency-huge", "canary", "run", "--url", "http://127.0.0.1:{port}", "--concurrency",
      "99999999999999999999", expect=2),
    C("canary-out-is-file", "canary", "run", "--url", "http://127.0.0.1:{port}", "--out", "{garbage}", expect={2, 4},
      watch=("garbage",)),
    C("canary-schedule-every-garbage", "canary", "schedule", "--name", "wk", "--url", "http://127.0.0.1:{port}",
      "--every", "often", "--for", "7d", "--root", "{t}", expect=2, setup=lambda w, t: {"t": str(t)}),
    C("canary-schedule-for-overflow", "canary", "schedule", "--name", "wk", "--url", "http://127.0.0.1:{port}",
      "--every", "1h", "--for", "99999999999999999999d", "--root", "{t}", expect=2, setup=lambda w, t: {"t": str(t)}),
    C("canary-schedule-name-traversal", "canary", "schedule", "--name", "../../etc", "--url",
      "http://127.0.0.1:{port}", "--root", "{t}", expect=2, setup=lambda w, t: {"t": str(t)}),
    C("canary-trend-missing", "canary", "trend", "{missing}", expect=2),
    C("canary-trend-garbage-runs", "canary", "trend", "{t}", expect={1, 2},
      setup=lambda w, t: {"t": str(t), "r": _write(t / "runs" / "20260101T000000Z" / "report.json", os.urandom(900))}),
    C("canary-trend-deep-runs", "canary", "trend", "{t}", expect={1, 2},
      setup=lambda w, t: {"t": str(t), "r": _write(t / "runs" / "20260101T000000Z" / "report.json",
                                                   "[" * 100_000 + "]" * 100_000)}),
    # ------------------------------------------------------------ demo
    C("demo-out-foreign-directory", "demo", "--staged", "--out", "{precious}", expect=2, setup=_demo_target),
    C("demo-out-is-file", "demo", "--staged", "--out", "{garbage}", expect=2, watch=("garbage",)),
    C("demo-full-without-wheels", "demo", "--out", "{dir}/dm", expect=2),
    C("demo-full-wheelhouse-missing", "demo", "--out", "{dir}/dm2", "--wheelhouse", "{missing}",
      "--bootstrap-wheels", "{missing}", expect=2),
    # ------------------------------------------------------------ F1/F16: report and archive outputs
    C("compliance-report-device", "compliance", "check", "--root", "{root}", "--report", "{dev}", expect=2,
      watch=("o", "root"), setup=_special_outputs, code="output.not_a_file"),
    C("compliance-junit-fifo", "compliance", "check", "--root", "{root}", "--junit", "{fifo}", expect=2,
      watch=("o", "root"), setup=_special_outputs, code="output.not_a_file"),
    C("compliance-sarif-device", "compliance", "check", "--root", "{root}", "--sarif", "{dev}", expect=2,
      watch=("o", "root"), setup=_special_outputs, code="output.not_a_file"),
    C("compliance-textfile-device", "compliance", "check", "--root", "{root}", "--textfile", "{dev}", expect=2,
      watch=("o", "root"), setup=_special_outputs, code="output.not_a_file"),
    C("compliance-report-link", "compliance", "check", "--root", "{root}", "--report", "{link}", expect=2,
      watch=("o", "root"), setup=_special_outputs, code="output.is_link"),
    C("compliance-report-junit-same-path", "compliance", "check", "--root", "{root}", "--report", "{o}/r.xml",
      "--junit", "{o}/./r.xml", expect=2, watch=("o", "root"), setup=_special_outputs, code="output.same_path"),
    C("compliance-report-missing-directory", "compliance", "check", "--root", "{root}", "--report",
      "{o}/nodir/x/r.json", expect=2, watch=("o", "root"), setup=_special_outputs, code="output.no_directory"),
    C("support-bundle-force-device", "support-bundle", "--root", "{root}", "-o", "{dev}", "--force", expect=2,
      watch=("o", "root"), setup=_special_outputs, code="output.not_a_file"),
    C("support-bundle-force-fifo", "support-bundle", "--root", "{root}", "-o", "{fifo}", "--force", expect=2,
      watch=("o", "root"), setup=_special_outputs, code="output.not_a_file"),
    C("smoke-junit-device", "smoke", "--url", "http://127.0.0.1:{port}", "--junit", "{dev}", expect=2,
      watch=("o",), setup=_special_outputs, code="output.not_a_file"),
    C("smoke-junit-missing-directory", "smoke", "--url", "http://127.0.0.1:{port}", "--junit", "{o}/no/j.xml",
      expect=2, watch=("o",), setup=_special_outputs, code="output.no_directory"),
    C("canary-junit-device", "canary", "run", "--url", "http://127.0.0.1:{port}", "--junit", "{dev}", expect=2,
      watch=("o",), setup=_special_outputs, code="output.not_a_file"),
    C("canary-junit-link", "canary", "run", "--url", "http://127.0.0.1:{port}", "--junit", "{link}", expect=2,
      watch=("o",), setup=_special_outputs, code="output.is_link"),
    # ------------------------------------------------------------ F7: the interpreter written into ExecStart=
    C("install-vllm-python-newline-injection", "install", "{bundle}", "--trust", *P, "--root", "{root}",
      "--instance", "fresh", "--vllm-python", "{py}", expect=2, watch=("root",),
      setup=_python_named("inj" + INJECTION), code="install.bad_python"),
    C("install-vllm-python-space", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--instance", "fresh",
      "--vllm-python", "{py}", expect=2, watch=("root",), setup=_python_named("sp ace"), code="install.bad_python"),
    C("install-vllm-python-percent", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--instance",
      "fresh", "--vllm-python", "{py}", expect=2, watch=("root",), setup=_python_named("py%i"),
      code="install.bad_python"),
    C("install-vllm-python-relative", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--instance",
      "fresh", "--vllm-python", "python3", expect=2, watch=("root",), code="install.bad_python"),
    C("install-python-newline-injection", "install", "{bundle}", "--trust", *P, "--root", "{root}", "--instance",
      "fresh", "--python", "/usr/bin/python3" + INJECTION, expect=2, watch=("root",), code="install.bad_python"),
    C("compliance-recorded-python-injected", "compliance", "check", "--root", "{root2}", expect=1,
      setup=_injected_python_record, code="compliance.config.unit"),
    # ------------------------------------------------------------ F4/F8: the audit anchor and log
    C("audit-anchor-deleted", "audit", "verify", "--root", "{root2}", expect=1, code="audit.anchor_missing",
      setup=_audit_change(lambda r: (r / ANCHOR).unlink())),
    C("audit-anchor-directory", "audit", "verify", "--root", "{root2}", expect=1, code="audit.anchor_missing",
      setup=_audit_change(_replace(ANCHOR, lambda p: p.mkdir()))),
    C("audit-cut-head-rewritten-anchor-deleted", "audit", "verify", "--root", "{root2}", expect=1,
      code="audit.anchor_missing", setup=_cut_and_hide),
    C("compliance-audit-anchor-deleted", "compliance", "check", "--root", "{root2}", expect=1,
      code="compliance.audit.chain", setup=_audit_change(lambda r: (r / ANCHOR).unlink())),
    C("audit-log-fifo", "audit", "verify", "--root", "{root2}", expect=1, code="audit.not_a_file",
      setup=_audit_change(_replace(LOGFILE, lambda p: os.mkfifo(p)))),
    C("audit-log-link-to-dev-zero", "audit", "verify", "--root", "{root2}", expect=1, code="audit.not_a_file",
      setup=_audit_change(_replace(LOGFILE, lambda p: p.symlink_to("/dev/zero")))),
    C("compliance-audit-log-fifo", "compliance", "check", "--root", "{root2}", expect=1,
      code="compliance.audit.chain", setup=_audit_change(_replace(LOGFILE, lambda p: os.mkfifo(p)))),
    C("install-refused-audit-log-fifo", "install", "{bundle}", "--trust", *P, "--root", "{root2}", "--host",
      "0.0.0.0", "--vllm-python", sys.executable, expect=2, code="install.exposed_bind",
      setup=_audit_change(_replace(LOGFILE, lambda p: os.mkfifo(p)))),
    # ------------------------------------------------------------ F5: keys and signatures on a full or read-only disk
    C("keys-generate-disk-full", "keys", "generate", "--out", "{full}/k", "--name", "b", env=ENV_PASS, expect=4,
      watch=("full",), setup=_small_disk(), code="output.disk_full"),
    C("keys-generate-read-only", "keys", "generate", "--out", "{full}/k", "--name", "b", env=ENV_PASS,
      expect={2, 3}, watch=("full",), setup=_small_disk(fill=False, read_only=True)),
    C("sign-disk-full-leaves-bundle-intact", "bundle", "sign", "{b}", "--key", "{co}", expect=4, watch=("full",),
      setup=_small_disk(bundle=True), code="output.disk_full"),
    C("sign-read-only-bundle", "bundle", "sign", "{b}", "--key", "{co}", expect=3, watch=("full",),
      setup=_small_disk(bundle=True, fill=False, read_only=True), code="output.not_writable"),
    C("keys-generate-passphrase-too-long", "keys", "generate", "--out", "{dir}/kp1", "--name", "p",
      env={"GPTOSSCTL_KEY_PASSPHRASE": "a" * 1024}, expect=2, code="key.bad_passphrase"),
    C("keys-generate-passphrase-not-utf8", "keys", "generate", "--out", "{dir}/kp2", "--name", "p",
      env={"GPTOSSCTL_KEY_PASSPHRASE": "\udcff"}, expect=2, code="key.bad_passphrase"),
    C("sign-passphrase-not-utf8", "bundle", "sign", "{bundle}", "--key", "{key}",
      env={"GPTOSSCTL_KEY_PASSPHRASE": "\udcff"}, expect=2, watch=("bundle",), code="key.bad_passphrase"),
    C("sign-passphrase-too-long", "bundle", "sign", "{bundle}", "--key", "{key}",
      env={"GPTOSSCTL_KEY_PASSPHRASE": "a" * 1024}, expect=2, watch=("bundle",), code="key.bad_passphrase"),
    # ------------------------------------------------------------ F2: demo --out replaces only a demo's own folder
    C("demo-out-marker-beside-foreign-files", "demo", "--staged", "--out", "{precious}", expect=2,
      watch=("precious",), setup=_marked_target(DEMO_MARKER, "thesis.tex"), code="demo.foreign_out"),
    C("demo-out-marker-not-the-demos", "demo", "--staged", "--out", "{precious}", expect=2, watch=("precious",),
      setup=_marked_target("anything\n", "keys/notes.txt"), code="demo.foreign_out"),
    # ------------------------------------------------------------ F3: links inside --root that lead out of it
    C("install-root-etc-links-out", "install", "{bundle}", "--trust", *P, "--root", "{fresh}", "--vllm-python",
      sys.executable, expect=2, watch=("victim",), setup=_root_with_link("etc/gptoss"),
      code="install.link_escapes_root"),
    C("install-root-opt-links-out", "install", "{bundle}", "--trust", *P, "--root", "{fresh}", "--vllm-python",
      sys.executable, expect=2, watch=("victim",), setup=_root_with_link("opt/gptoss"),
      code="install.link_escapes_root"),
    C("install-root-instance-links-out", "install", "{bundle}", "--trust", *P, "--root", "{fresh}",
      "--vllm-python", sys.executable, expect=2, watch=("victim",),
      setup=_root_with_link("opt/gptoss/tiny-gpt-oss"), code="install.link_escapes_root"),
    C("install-root-audit-log-links-out", "install", "{bundle}", "--trust", *P, "--root", "{fresh}",
      "--vllm-python", sys.executable, expect=2, watch=("victim",), setup=_root_with_link("var/log/gptoss"),
      code="install.link_escapes_root"),
    C("install-root-state-links-out", "install", "{bundle}", "--trust", *P, "--root", "{fresh}", "--vllm-python",
      sys.executable, expect=2, watch=("victim",), setup=_root_with_link("var/lib/gptossctl"),
      code="install.link_escapes_root"),
    # ------------------------------------------------------------ F11: an output inside its own source
    C("split-out-inside-bundle", "bundle", "split", "{b}", "--out", "{b}/payload/parts", "--part-size", "1108480",
      expect=2, watch=("b",), setup=_bundle_variant(lambda b: None), code="split.out_inside_source"),
    C("copy-out-inside-bundle", "bundle", "copy", "{b}", "{b}/payload/copy", expect=2, watch=("b",),
      setup=_bundle_variant(lambda b: None), code="copy.out_inside_source"),
    C("copy-out-is-source", "bundle", "copy", "{b}", "{b}", expect=2, watch=("b",),
      setup=_bundle_variant(lambda b: None), code="copy.out_inside_source"),
    C("join-out-inside-parts", "bundle", "join", "{parts}", "--out", "{parts}/j", expect=2, watch=("parts",),
      setup=_split_parts, code="join.out_inside_source"),
    C("delta-out-inside-new", "bundle", "delta", "{bundle}", "{b}", "--out", "{b}/payload/d", expect=2,
      watch=("b",), setup=_bundle_variant(lambda b: None), code="delta.out_inside_source"),
    C("apply-out-inside-base", "bundle", "apply", "{d}", "--base", "{bundle}", "--out", "{bundle}/payload/n",
      expect=2, watch=("bundle", "d"), setup=_delta, code="apply.out_inside_source"),
    C("apply-out-inside-delta", "bundle", "apply", "{d}", "--base", "{bundle}", "--out", "{d}/n",
      expect=2, watch=("bundle", "d"), setup=_delta, code="apply.out_inside_source"),
    C("install-root-inside-bundle", "install", "{b}", "--trust", *P, "--root", "{b}/payload/root", "--vllm-python",
      sys.executable, expect=2, watch=("b",), setup=_bundle_variant(lambda b: None),
      code="install.out_inside_source"),
    C("install-root-is-bundle", "install", "{b}", "--trust", *P, "--root", "{b}", "--vllm-python", sys.executable,
      expect=2, watch=("b",), setup=_bundle_variant(lambda b: None), code="install.out_inside_source"),
    # ------------------------------------------------------------ F12: a refused install from parts leaves nothing
    C("install-parts-refused-after-assembly", "install", "{parts}", "--trust", *P, "--root", "{root2}",
      "--instance", "other", "--port", "8125", "--profile", "no-such-profile", "--vllm-python", sys.executable,
      expect={1, 2}, watch=("root2", "parts"), setup=_parts_and_roots()),
    C("install-parts-untrusted-fresh-root", "install", "{parts}", "--trust", "{bobpub}", "--root", "{fresh}",
      "--vllm-python", sys.executable, expect=1, watch=("fresh_opt", "parts"), setup=_parts_and_roots()),
    C("install-parts-missing-one", "install", "{parts}", "--trust", *P, "--root", "{root2}", "--instance", "other",
      "--port", "8125", "--vllm-python", sys.executable, expect=1, watch=("root2", "parts"),
      setup=_parts_and_roots(drop_part=True)),
    C("install-parts-missing-one-fresh-root", "install", "{parts}", "--trust", *P, "--root", "{fresh}",
      "--vllm-python", sys.executable, expect=1, watch=("fresh_opt", "parts"), setup=_parts_and_roots(drop_part=True)),
    # ------------------------------------------------------------ F19: rollback re-hashes its target
    C("rollback-to-changed-payload", "rollback", "--root", "{root2}", "--yes", expect=1, watch=("root2",),
      setup=_rolled_forward(_append("payload/model/config.json", b"x")), code="rollback.drift"),
    C("rollback-to-changed-unit", "rollback", "--root", "{root2}", "--yes", expect=1, watch=("root2",),
      setup=_rolled_forward(_append("unit-r0.service", b"ExecStartPre=+/bin/true\n")), code="rollback.drift"),
    C("rollback-to-edited-record", "rollback", "--root", "{root2}", "--yes", expect=1, watch=("root2",),
      setup=_rolled_forward(_edit_record), code="rollback.drift"),
    C("audit-anchor-deleted-then-appended", "audit", "verify", "--root", "{root2}", expect=1,
      code="audit.anchor_missing", setup=_anchor_deleted_then_refusal),
    # ------------------------------------------------------------ audit reset / acknowledge misuse
    C("audit-reset-unconfirmed", "audit", "reset", "--reason", "x", "--root", "{root2}", expect=2,
      code="audit.confirm", watch=("logdir", "statedir"), setup=_audit_broken),
    C("audit-reset-no-reason", "audit", "reset", "--yes", "--root", "{root2}", expect=2, code="audit.bad_reason",
      watch=("logdir", "statedir"), setup=_audit_broken),
    C("audit-reset-blank-reason", "audit", "reset", "--reason", "  \t ", "--yes", "--root", "{root2}", expect=2,
      code="audit.bad_reason", watch=("logdir", "statedir"), setup=_audit_broken),
    C("audit-reset-reason-newline", "audit", "reset", "--reason", "ok\n{{\"seq\": 99}}", "--yes", "--root", "{root2}",
      expect=2, code="audit.bad_reason", watch=("logdir", "statedir"), setup=_audit_broken),
    C("audit-reset-reason-escape", "audit", "reset", "--reason", "ok\x1b[2J", "--yes", "--root", "{root2}",
      expect=2, code="audit.bad_reason", watch=("logdir", "statedir"), setup=_audit_broken),
    C("audit-reset-reason-huge", "audit", "reset", "--reason", "x" * 5000, "--yes", "--root", "{root2}", expect=2,
      code="audit.bad_reason", watch=("logdir", "statedir"), setup=_audit_broken),
    C("audit-reset-intact-chain", "audit", "reset", "--reason", "x", "--yes", "--root", "{root2}", expect=2,
      code="audit.nothing_to_reset", watch=("logdir", "statedir"), setup=_audit_intact),
    C("audit-reset-fresh-root", "audit", "reset", "--reason", "x", "--yes", "--root", "{dir}", expect=2,
      code="audit.nothing_to_reset"),
    C("audit-reset-log-links-out", "audit", "reset", "--reason", "x", "--yes", "--root", "{root2}", expect=2,
      code="install.link_escapes_root", watch=("victim",), setup=_audit_log_links_out),
    C("audit-acknowledge-unconfirmed", "audit", "acknowledge", "--root", "{root2}", expect=2, code="audit.confirm",
      watch=("logdir", "statedir"), setup=_audit_reset_pending),
    C("audit-acknowledge-nothing-reset", "audit", "acknowledge", "--yes", "--root", "{root2}", expect=2,
      code="audit.nothing_to_acknowledge", watch=("logdir", "statedir"), setup=_audit_intact),
    C("audit-acknowledge-broken-chain", "audit", "acknowledge", "--yes", "--root", "{root2}", expect=1,
      code="audit.tampered", watch=("logdir", "statedir"), setup=_audit_broken),
    C("compliance-audit-reset-unacknowledged", "compliance", "check", "--root", "{root2}", expect=1,
      code="compliance.audit.chain", setup=_audit_reset_pending),
    C("uninstall-on-cut-chain", "uninstall", "--root", "{root2}", "--yes", expect=1, code="audit.tampered",
      watch=("root2", "logdir", "statedir"), setup=_audit_broken),
    C("rollback-on-cut-chain", "rollback", "--root", "{root2}", "--yes", expect=1, code="audit.tampered",
      watch=("root2", "logdir", "statedir"), setup=_audit_broken),
    C("support-bundle-audit-log-fifo", "support-bundle", "--root", "{root2}", "-o", "{root2}.tgz", expect={0},
      setup=_audit_change(_replace(LOGFILE, lambda p: os.mkfifo(p)))),
    # Second independent pass (adversarial2): paths the operating system refuses, checked before any command
    # touches them or mapped at the top (never exit 70).
    *(C(f"long-name-{name}", *argv, expect=2, code=code, env=ENV_PASS) for name, code, argv in (
        ("inspect", "path.too_long", ("bundle", "inspect", "{dir}/" + "x" * 300)),
        ("verify", "path.too_long", ("bundle", "verify", "{dir}/" + "x" * 300, "--trust", "{pub}")),
        ("keys", "path.too_long", ("keys", "generate", "--out", "{dir}/" + "x" * 300, "--name", "a")),
        ("trend", "path.too_long", ("canary", "trend", "{dir}/" + "x" * 300)),
        ("status-root", "usage", ("status", "--root", "{dir}/" + "x" * 300)),
        ("install-root", "usage", ("install", "{bundle}", "--trust", "{pub}", "--root", "{dir}/" + "x" * 300)),
    )),
    C("install-root-link-loop", "install", "{bundle}", "--trust", "{pub}", "--root", "{loop}/r", "--yes",
      "--vllm-python", sys.executable, expect=2, code="path.link_loop", setup=_link_loop),
    C("status-root-link-loop", "status", "--root", "{loop}", expect=2, code="usage", setup=_link_loop),
    C("audit-verify-root-missing", "audit", "verify", "--root", "{missing}", expect=2, code="usage"),
    C("compliance-root-missing", "compliance", "check", "--root", "{missing}", expect=2, code="usage"),
    C("demo-out-below-a-file", "demo", "--staged", "--out", "{garbage}/x", expect=2, code="path.invalid"),
    C("sign-with-the-public-key", "bundle", "sign", "{bundle}", "--key", "{pub}", expect=2, code="key.is_public",
      env=ENV_PASS, watch=("bundle",)),
    C("verify-clock-skew-empty", "bundle", "verify", "{bundle}", "--trust", "{pub}", "--clock-skew=", expect=2,
      code="usage.bad_duration"),
    # ------------------------------------------------------------ trust roots (gptossctl.trust-root/1)
    *[C(f"trust-root-{name}-{verb}", *argv, expect=1 if name != "huge" else {1, 2}, code=code,
        watch=("root2",), setup=_root_doc(make))
      for name, make, code in [
          ("duplicate-keys", lambda: _signed_root_doc(payload=b'{"schema":"gptossctl.trust-root/1","version":1,'
                                                      b'"version":2}'), "trust.root_malformed"),
          ("wrong-types", lambda: _signed_root_doc(_set("version", "1")), "trust.root_malformed"),
          ("threshold-as-bool", lambda: _signed_root_doc(_set("roles.release.threshold", True)),
           "trust.root_malformed"),
          ("wrong-schema", lambda: _signed_root_doc(_set("schema", "gptossctl.trust-root/9")), "trust.root_malformed"),
          ("unknown-field", lambda: _signed_root_doc(_set("extra", 1)), "trust.root_malformed"),
          ("threshold-over-keys", lambda: _signed_root_doc(_set("roles.release.threshold", 2)),
           "trust.root_malformed"),
          ("keyid-not-its-key", lambda: _signed_root_doc(_set("signers.alice.keyid", "0" * 64)),
           "trust.root_malformed"),
          ("ecdsa-not-yet", lambda: _signed_root_doc(_set("signers.alice.algorithm", "ecdsa-p256")),
           "trust.root_malformed"),
          ("manifest-envelope", lambda: _signed_root_doc(payload=b"{}").replace(
              b"trust-root+json", b"manifest+json"), "trust.root_malformed"),
          ("huge", lambda: b" " * (1 << 20), "trust.root_unreadable"),
          ("bad-signature", lambda: _signed_root_doc(bad_signature=True), "trust.root_unsigned"),
      ]
      for verb, argv in [
          ("verify", ("bundle", "verify", "{bundle}", "--trust-root", "{rootdoc}")),
          ("install", ("install", "{bundle}", "--trust-root", "{rootdoc}", "--root", "{fresh}", "--vllm-python",
                       sys.executable)),
          ("rotate", ("trust", "rotate", "{rootdoc}", "--root", "{root2}", "--yes")),
      ]
      if not (name == "bad-signature" and verb == "rotate")],
    C("trust-rotate-bad-signature", "trust", "rotate", "{rootdoc}", "--root", "{root2}", "--yes", expect=1,
      code="trust.rotation_refused", watch=("root2",), setup=_root_doc(lambda: _signed_root_doc(
          _set("version", 2), bad_signature=True))),
]


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **env}
    return subprocess.run([str(GPTOSSCTL), *argv, "--json"], capture_output=True, text=True, timeout=300,
                          env=full, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_cleanly(case: Case, world: World, tmp_path: Path) -> None:
    extra = case.setup(world, tmp_path) if case.setup else {}
    w = World(world.base, {**world.paths, **extra})
    try:
        before = {name: _state(Path(w.paths[name])) for name in case.watch}
        r = _run([w.fmt(a) for a in case.argv], {k: w.fmt(v) for k, v in case.env})
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
        doc = json.loads(r.stdout)  # exactly one document
        err = doc.get("error") or {}
        assert r.returncode in case.expect, f"exit {r.returncode}: {err.get('code')}: {err.get('message', '')[:300]}"
        assert doc["schema"] == "gptossctl.result/1" and doc["exit_code"] == r.returncode
        if case.code:
            codes = [err.get("code")] + [f.get("code") for f in doc.get("findings", [])]
            assert case.code in codes, f"expected {case.code}, got {codes}: {err.get('message', '')[:300]}"
        if r.returncode and err:  # refused: the error says what and what to do
            assert err.get("code") and err.get("message") and err.get("hint"), f"no next step said: {err}"
            assert "internal error" not in err["message"], doc
        elif r.returncode:  # checked and failed: every finding says what to do
            assert doc["findings"] and all(f.get("hint") for f in doc["findings"]), f"no next step said: {doc}"
        for name in case.watch:
            after = _state(Path(w.paths[name]))
            changed = sorted(k for k in set(after) | set(before[name]) if after.get(k) != before[name].get(k))
            assert not changed, f"{name} changed by a refused command: {changed[:10]}"
    finally:
        for mounted in ("ro", "full"):
            if mounted in extra:
                subprocess.run(["umount", extra[mounted]], check=False)


# ---------------------------------------------------------------- F10: a stdout that cannot take the result
# Not a CASES entry: the result document itself is what cannot be delivered. /dev/full is opened for writing,
# never replaced; `>&-` starts the command with fd 1 closed.
STDOUT_CASES = [
    ("json-closed", ["profiles", "list", "--nvidia-smi-xml", "{h100}", "--json"], ">&-"),
    ("json-full", ["profiles", "list", "--nvidia-smi-xml", "{h100}", "--json"], ">/dev/full"),
    ("human-full", ["hw", "check", "--nvidia-smi-xml", "{h100}"], ">/dev/full"),
    ("human-closed", ["hw", "check", "--nvidia-smi-xml", "{h100}"], ">&-"),
    ("json-failure-full", ["keys", "show", "{missing}", "--json"], ">/dev/full"),
    ("help-full", ["--help"], ">/dev/full"),
    ("version-full", ["--version"], ">/dev/full"),
]


@pytest.mark.parametrize("argv,redirect", [(a, r) for _i, a, r in STDOUT_CASES], ids=[i for i, _a, _r in STDOUT_CASES])
def test_unwritable_stdout_is_exit_4_in_one_line(argv: list[str], redirect: str, world: World) -> None:
    cmd = " ".join(shlex.quote(a) for a in [str(GPTOSSCTL), *(world.fmt(a) for a in argv)]) + " " + redirect
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 4, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "stdout" in lines[0], lines


# ---------------------------------------------------------------- F17: no secret survives into a support bundle
def test_support_bundle_redacts_every_member_and_reads_back_every_value(world: World, tmp_path: Path) -> None:
    """A drop-in with a *_PASSPHRASE and a bearer token in a malformed assignment (systemd echoes the token in
    its own warning, which goes into the archive as a command output): neither may be anywhere in it."""
    import tarfile

    root = _root_copy(world, tmp_path)
    d = root / "etc/systemd/system/gptoss@tiny-gpt-oss-r0.service.d"
    d.mkdir(parents=True)
    secrets = ("hunter2hunter2", "sk-abcdefghijklmnopqrstuvwxyz012345", "s3cr3t-db-pass")
    (d / "other.conf").write_text(f'[Service]\nEnvironment="MY_PASSPHRASE={secrets[0]}"\n'
                                  f"Environment=X=Bearer {secrets[1]}\nEnvironment=DB_PASS={secrets[2]}\n")
    out = tmp_path / "sb.tgz"
    r = _run(["support-bundle", "--root", str(root), "-o", str(out)], {})
    assert r.returncode == 0, r.stdout[-3000:]
    with tarfile.open(out) as tar:
        members = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    leaked = sorted(name for name, data in members.items() for s in secrets if s.encode() in data)
    assert not leaked, leaked
    assert any(name.startswith("units/dropins/") for name in members)


# ---------------------------------------------------------------- F13: Ctrl-C during install
@pytest.mark.parametrize("after_steps", [1, 2, 4, 6, 8])
def test_install_interrupted_reports_one_document_and_records_it(after_steps: int, world: World,
                                                                 tmp_path: Path) -> None:
    """SIGINT (as Ctrl-C sends it) once the install has announced `after_steps` steps. Whatever the moment:
    exactly one result document whose exit code is the process's (130 install.interrupted, or 0 when it had
    finished), an audit entry for the interruption, no temporary file anywhere, and a rerun that converges."""
    import signal as sig

    root = tmp_path / "r"
    argv = [str(GPTOSSCTL), "install", world.paths["bundle"], "--trust", world.paths["pub"], "--root", str(root),
            "--vllm-python", sys.executable, "--json"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         env={**os.environ, "COLUMNS": "200"},
                         preexec_fn=lambda: sig.signal(sig.SIGINT, sig.SIG_DFL))
    assert p.stderr is not None
    seen = 0
    while seen < after_steps and (line := p.stderr.readline()):
        seen += line.lstrip().startswith(b"-")
    p.send_signal(sig.SIGINT)
    out, err = p.communicate(timeout=300)
    assert b"Traceback" not in err, err[-3000:]
    doc = json.loads(out)  # exactly one document, also when interrupted
    assert p.returncode in (0, 130) and doc["exit_code"] == p.returncode, (p.returncode, doc.get("error"))
    if p.returncode == 130:
        assert doc["error"]["code"] == "install.interrupted", doc["error"]
        last = json.loads((root / LOGFILE).read_text().splitlines()[-1])
        assert last["result"] == "interrupted", last
    leftovers = [str(q) for q in root.rglob("*.tmp")]
    assert not leftovers, leftovers
    assert _run(["audit", "verify", "--root", str(root)], {}).returncode == 0
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:]
    assert not list(root.rglob("*.tmp"))


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_install_modes_do_not_follow_the_callers_umask(world: World, tmp_path: Path, umask: int) -> None:
    """Under umask 000 the release and /etc/gptoss were world-writable; under 077 the service user could not
    reach its own model. What install creates gets the modes it asks for."""
    root = tmp_path / "root"
    r = subprocess.run([str(GPTOSSCTL), "install", world.paths["bundle"], "--trust", world.paths["pub"], "--root",
                        str(root), "--vllm-python", sys.executable, "--json"], capture_output=True, text=True,
                       timeout=600, preexec_fn=lambda: os.umask(umask))
    assert r.returncode == 0, r.stdout[-3000:]
    for d in ("opt/gptoss", "opt/gptoss/tiny-gpt-oss/releases", "etc/gptoss", "opt/gptoss/tiny-gpt-oss/releases/5",
              "opt/gptoss/tiny-gpt-oss/releases/5/payload/model"):
        assert (root / d).stat().st_mode & 0o777 == 0o755, d
    assert (root / "opt/gptoss/tiny-gpt-oss/releases/5/payload/model/config.json").stat().st_mode & 0o777 == 0o644
    assert (root / "etc/gptoss/tiny-gpt-oss/api-key").stat().st_mode & 0o777 == 0o600
