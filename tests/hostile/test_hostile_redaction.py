"""Secrets in forms no variable name gives away, through the installed console script: a support bundle and
the compliance reports carry none of them (read back), and the report files are 0600.

Each case was run against the code before its fix and failed there (see the commit messages).
"""

# ruff: noqa: F811 - `world` is the fixture imported from test_hostile_inputs, taken as a parameter
from __future__ import annotations

import json
import re
import stat
import tarfile
from pathlib import Path

import pytest

from tests.hostile.test_hostile_inputs import (  # noqa: F401 - `world` is a fixture: importing registers it
    World,
    _root_copy,
    _run,
    world,
)

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"
# Each form, and the secret in it that must not leave the host.
FORMS = {
    "openai-env": ("Environment=OPENAI_API_KEY=sk-proj-Abcdefghijklmnopqrstuv012345", "sk-proj-Abcdefghijklmnopqrstuv012345"),
    "aws-env": ("Environment=AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
                "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"),
    "proxy-userinfo": ("Environment=https_proxy=http://proxyuser:Pr0xyPassw0rdZ@proxy:3128", "Pr0xyPassw0rdZ"),
    "basic-header": ("# Dec 07 10:00:01 host vllm[42]: Authorization: Basic dXNlcjpQYXNzd29yZDEyMw==",
                     "dXNlcjpQYXNzd29yZDEyMw=="),
    "bearer-header": ("# Dec 07 10:00:02 host curl[43]: authorization: bearer Zq8wYt3vXk2Lm9Np4Rs7Uv0Wx",
                      "Zq8wYt3vXk2Lm9Np4Rs7Uv0Wx"),
    "api-key-flag": ("ExecStartPre=/usr/bin/true --api-key sk-live0123456789abcdefghij",
                     "sk-live0123456789abcdefghij"),
    "api-key-flag-eq": ("# Dec 07 10:00:03 host sh[44]: client --token=Tk9f8e7d6c5b4a3Z --other", "Tk9f8e7d6c5b4a3Z"),
    "password-flag": ("# Dec 07 10:00:04 host sh[45]: mysql --password hunter2hunter2", "hunter2hunter2"),
    "url-query": ("# Dec 07 10:00:05 host vllm[46]: GET http://h/x?user=a&password=QueryPassw0rd99 200",
                  "QueryPassw0rd99"),
    "jwt": ("# Dec 07 10:00:06 host vllm[47]: got eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNH"
            "l0w5N_XgL0n3I9PlFUP0THsR8U", "eyJzdWIiOiIxMjM0NTY3ODkwIn0"),
    "pem": (f"# -----BEGIN PRIVATE KEY-----\n# {PEM_BODY}\n# -----END PRIVATE KEY-----", PEM_BODY),
}
CONSUMER_KEY = "consumer-Qm4tR8wZ1pL6vB3nX9kJ2hF7"  # only by value: in a file under /etc/gptoss/<instance>/


def _dropin(root: Path) -> Path:
    d = root / "etc/systemd/system" / f"gptoss@{INSTANCE}-r0.service.d"
    d.mkdir(parents=True, exist_ok=True)
    return d / "site.conf"


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


def test_support_bundle_ships_no_credential_in_any_form(world: World, tmp_path: Path) -> None:
    root = _root_copy(world, tmp_path)
    api_key = (root / "etc/gptoss" / INSTANCE / "api-key").read_text().strip()
    consumers = root / "etc/gptoss" / INSTANCE / "consumers"
    consumers.mkdir()
    (consumers / "alice.key").write_text(CONSUMER_KEY + "\n")
    lines = [line for line, _secret in FORMS.values()]
    _dropin(root).write_text("[Service]\n" + "\n".join(lines) + "\n"
                             f"# journal: request from alice with {CONSUMER_KEY} refused\n"
                             f"# journal: echoed {api_key} in a warning\n"
                             "Environment=NCCL_SOCKET_IFNAME=eth0\n")
    env = next((root / "opt/gptoss" / INSTANCE / "releases").glob("*/service-r0.env"))
    env.write_text(env.read_text() + "https_proxy=http://u2:EnvPr0xyPass@proxy:3128\n")
    out = tmp_path / "sb.tgz"
    r = _run(["support-bundle", "--root", str(root), "-o", str(out)], {})
    doc = json.loads(r.stdout)
    assert r.returncode == 0, doc
    members = _members(out)
    secrets = {name: s for name, (_l, s) in FORMS.items()}
    secrets.update(consumer=CONSUMER_KEY, api_key=api_key, env_proxy="EnvPr0xyPass")
    leaked = sorted(f"{form} in {name}" for name, data in members.items() for form, s in secrets.items()
                    if s.encode() in data)
    assert not leaked, leaked
    site = members[f"units/dropins/gptoss@{INSTANCE}-r0.service.d/site.conf"].decode()
    assert "NCCL_SOCKET_IFNAME=eth0" in site  # no secret there: not redacted
    assert "https_proxy=http://[REDACTED]@proxy:3128" in site
    red = doc["data"]["redaction"]
    assert red["layers"] == ["name", "structure", "value"] and red["safe_to_send"] is True, red
    assert oct(stat.S_IMODE(out.stat().st_mode)) == "0o600"


def test_compliance_reports_carry_no_secret_from_a_tampered_unit(world: World, tmp_path: Path) -> None:
    """The unit diff of service.unit's evidence carries the lines a tamperer added: the real API key and a
    proxy password. No report format (stdout JSON, --report, --sarif, --junit) contains either; files 0600."""
    root = _root_copy(world, tmp_path)
    api_key = (root / "etc/gptoss" / INSTANCE / "api-key").read_text().strip()
    unit = root / "etc/systemd/system" / f"gptoss@{INSTANCE}-r0.service"
    unit.write_text(unit.read_text().replace("[Service]\n", f"[Service]\nEnvironment=VLLM_API_KEY={api_key}\n"
                                             "Environment=HTTP_PROXY=http://u:p@h:1\n", 1))
    outs = {"--report": tmp_path / "r.json", "--sarif": tmp_path / "r.sarif", "--junit": tmp_path / "r.xml"}
    for p in outs.values():  # an existing 0644 report is replaced by a 0600 one
        p.write_text("old\n")
        p.chmod(0o644)
    r = _run(["compliance", "check", "--root", str(root), *[a for k, p in outs.items() for a in (k, str(p))]], {})
    doc = json.loads(r.stdout)
    assert r.returncode == 1, doc
    evidence = json.dumps(doc)
    assert "VLLM_API_KEY" in evidence, "the drifted line is still reported (its value redacted)"
    texts = {"stdout": r.stdout, **{k: p.read_text() for k, p in outs.items()}}
    leaked = sorted(name for name, text in texts.items() if api_key in text or re.search(r"u:p@h", text))
    assert not leaked, leaked
    modes = {k: oct(stat.S_IMODE(p.stat().st_mode)) for k, p in outs.items()}
    assert set(modes.values()) == {"0o600"}, modes
