"""The one redactor (compliance.redact): each layer on its own, learning, the read-back, and when it may say
"safe"."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptossctl.compliance.redact import REDACTED, Redactor
from gptossctl.compliance.support import Redactor as SupportRedactor

STRUCTURES = [
    ("https_proxy=http://user:S3cretPass@proxy:3128", "S3cretPass"),
    ("ALL_PROXY=socks5://tok3nOnlyUserinfo@proxy:1080", "tok3nOnlyUserinfo"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    ("AUTHORIZATION: BEARER abcDEF0123456789", "abcDEF0123456789"),
    ('{"authorization": "Token 9f8e7d6c5b4a"}', "9f8e7d6c5b4a"),
    ("ExecStart=/bin/x --api-key sk-abc0123456789abcdefXYZ --port 8000", "sk-abc0123456789abcdefXYZ"),
    ("ExecStart=/bin/x --api-key=plainwordsecret", "plainwordsecret"),
    ("run --password 'correct horse battery'", "correct horse battery"),
    ("run --hf-token hf_AbCdEfGhIjKlMnOpQrStUv", "hf_AbCdEfGhIjKlMnOpQrStUv"),
    ("key sk-proj-AbCdEfGhIjKlMnOpQrSt0123 echoed", "sk-proj-AbCdEfGhIjKlMnOpQrSt0123"),
    ("aws AKIAIOSFODNN7EXAMPLE in a log", "AKIAIOSFODNN7EXAMPLE"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl ok", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx8Yk\nQmFzZTY0Ym9keQ==\n-----END RSA PRIVATE KEY-----",
     "MIIEowIBAAKCAQEAx8Yk"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n(truncated)", "b3BlbnNzaC1rZXktdjEAAAAA"),
]


@pytest.mark.parametrize("text,secret", STRUCTURES, ids=[s[:24] for s, _ in STRUCTURES])
def test_structural_secrets_are_redacted_and_learned(text: str, secret: str) -> None:
    r = Redactor()
    r.learn(text, assignments=False)  # as from a command's output: structure only
    out = r(text)
    assert secret not in out and REDACTED in out
    assert not r.leaks(out.encode())
    assert r.leaks(f"elsewhere {secret} again".encode()) or len(secret) < 6 or " " in secret


@pytest.mark.parametrize("text", ["Bearer tokens are checked by the router", "NCCL_SOCKET_IFNAME=eth0",
                                  "--api-key-file /etc/k", "http://127.0.0.1:8000/v1/models",
                                  "GIT_AUTHOR_NAME=alice", "--port 8000"])
def test_ordinary_text_is_left_alone(text: str) -> None:
    r = Redactor()
    r.learn(text)
    assert r(text) == text and not r.secrets


@pytest.mark.parametrize("text", ["max_tokens: 256", "tokenizer: /opt/x/tokenizer.json", "keys: alice",
                                  "API_KEY_FILE=/etc/gptoss/x/api-key"])
def test_named_like_a_secret_but_none_is_not_learned(text: str) -> None:
    r = Redactor()
    r.learn(text)
    assert not r.secrets


def test_by_name_values_are_learned_from_configuration_and_removed_everywhere() -> None:
    r = Redactor()
    r.learn('Environment="OPENAI_API_KEY=zz-opaque-value-1" AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENG\n')
    echoed = "systemd: Invalid environment assignment, ignoring: zz-opaque-value-1 and wJalrXUtnFEMIK7MDENG"
    out = r(echoed)
    assert "zz-opaque-value-1" not in out and "wJalrXUtnFEMIK7MDENG" not in out


def test_known_secret_files_are_learned_by_value(tmp_path: Path) -> None:
    inst = tmp_path / "etc/gptoss/demo"
    (inst / "trust").mkdir(parents=True)
    (inst / "api-key").write_text("A" * 43 + "\n")
    (inst / "router-key.map").write_text('"~^Bearer ' + "B" * 43 + '$" 1;\n')
    (inst / "consumers").mkdir()
    (inst / "consumers" / "team.key").write_text("# team\nconsumer-Qm4tR8wZ1pL6vB3nX9kJ2hF7\n")
    (inst / "trust" / "alice.pub").write_text("PUBLICKEYTEXTNOTSECRET0123456789\n")
    r = Redactor()
    r.add_known(tmp_path)
    text = f"{'A' * 43} {'B' * 43} consumer-Qm4tR8wZ1pL6vB3nX9kJ2hF7 PUBLICKEYTEXTNOTSECRET0123456789"
    assert r(text) == f"{REDACTED} {REDACTED} {REDACTED} PUBLICKEYTEXTNOTSECRET0123456789"


def test_safe_only_when_every_layer_ran_and_no_secret_file_was_unread(tmp_path: Path) -> None:
    r = Redactor()
    r("nothing")
    assert not r.complete  # the by-value layer never ran
    r.add_known(tmp_path)
    assert r.complete
    r.gaps.append("/etc/gptoss/x/api-key could not be read")
    assert not r.complete


def test_support_redactor_is_the_same_redactor() -> None:
    assert SupportRedactor is Redactor
