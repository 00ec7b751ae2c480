from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from gptossctl.errors import UsageError
from gptossctl.hardware.profiles import load_profile, load_profiles
from gptossctl.schemas import generate, render

REPO = Path(__file__).resolve().parents[2]
REQUIRED = {"hopper-120b", "hopper-20b", "blackwell-120b", "a100-120b", "a100-20b", "l40s-20b", "l40s-120b",
            "24gb-20b", "16gb-20b", "mi300x-120b", "cpu-tiny"}


def test_shipped_profiles_cover_the_hardware_classes() -> None:
    names = {p.name for p in load_profiles()}
    assert REQUIRED <= names


def test_published_schemas_are_current() -> None:
    for name, schema in generate().items():
        assert (REPO / "schemas" / name).read_text() == render(schema), f"run: python -m gptossctl.schemas ({name})"


@pytest.mark.parametrize("path", sorted((REPO / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_profiles_validate_against_the_published_schema(path: Path) -> None:
    schema = json.loads((REPO / "schemas" / "profile.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


@pytest.mark.parametrize("path", sorted((REPO / "bundles").glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_validate_against_the_published_schema(path: Path) -> None:
    schema = json.loads((REPO / "schemas" / "bundle-spec.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def _bad(tmp_path: Path, edit: str, old: str) -> UsageError:
    text = (REPO / "profiles" / "hopper-20b.yaml").read_text()
    assert old in text
    p = tmp_path / "hopper-20b.yaml"
    p.write_text(text.replace(old, edit))
    with pytest.raises(UsageError) as exc:
        load_profile(p)
    assert exc.value.code == "profile.invalid"
    return exc.value


def test_removed_environment_variable_is_refused_with_its_replacement(tmp_path: Path) -> None:
    e = _bad(tmp_path, "env:\n    VLLM_ATTENTION_BACKEND: FLASH_ATTN\n", "env: {}\n")
    assert "removed in vLLM 0.33" in (e.hint or "") and "line 20" in (e.hint or "")


def test_installer_owned_flag_is_refused(tmp_path: Path) -> None:
    e = _bad(tmp_path, "    host: 0.0.0.0\n    max-model-len", "    max-model-len")
    assert "set by the installer" in (e.hint or "")


def test_profile_without_memory_settings_is_refused(tmp_path: Path) -> None:
    e = _bad(tmp_path, "    gpu-memory-utilisation: 0.90\n", "    gpu-memory-utilization: 0.90\n")
    assert "gpu-memory-utilization" in (e.hint or "")


def test_vllm_config_carries_flags_and_tensor_parallel() -> None:
    p = {p.name: p for p in load_profiles()}["hopper-120b"]
    cfg = p.vllm_config(tensor_parallel=1)
    assert cfg["gpu-memory-utilization"] == 0.95 and cfg["max-num-batched-tokens"] == 1024
    assert cfg["tensor-parallel-size"] == 1 and "api-key" not in cfg


def test_every_production_profile_caches_prefixes_or_says_why() -> None:
    """Chat traffic shares system prompts: prefix caching is on unless the profile states why it is off
    (vLLM's recipe turns it off only for reproducible benchmarks). The tiny CPU profiles are test profiles."""
    from gptossctl.hardware.vllm_flags import unknown_flags

    production = [p for p in load_profiles() if p.production]
    assert len(production) >= 18 and not any("tiny" in p.models for p in production)
    for p in production:
        flag = p.vllm.flags.get("enable-prefix-caching")
        assert flag is True or (flag is False and p.vllm.prefix_caching_off), (p.name, flag)
        assert unknown_flags(["enable-prefix-caching"], p.vllm.versions) == []  # vLLM's own name, every version


def test_prefix_caching_off_needs_its_reason_and_the_reason_needs_it_off(tmp_path: Path) -> None:
    text = (REPO / "profiles" / "hopper-20b.yaml").read_text()
    off = text.replace("    enable-prefix-caching: true\n", "    enable-prefix-caching: false\n").replace(
        "  env: {}\n", "  prefix_caching_off: reproducible benchmark runs compare cold caches\n  env: {}\n")
    p = tmp_path / "hopper-20b.yaml"
    p.write_text(off)
    assert load_profile(p).vllm.prefix_caching_off == "reproducible benchmark runs compare cold caches"
    e = _bad(tmp_path, "  prefix_caching_off: benchmarks\n  env: {}\n", "  env: {}\n")  # flag on, reason given
    assert "prefix_caching_off" in (e.hint or "") and "enable-prefix-caching" in (e.hint or "")


def test_a_schema_1_profile_is_still_read_each_model_as_its_class(tmp_path: Path) -> None:
    """Bundles signed with gptossctl.profile/1 profiles stay installable: `models` is read as classes."""
    text = (REPO / "profiles" / "hopper-20b.yaml").read_text()
    v1 = text.replace("schema: gptossctl.profile/2", "schema: gptossctl.profile/1") \
        .replace("classes: [20b-class]", "models: [gpt-oss-20b]")
    assert v1 != text
    (tmp_path / "hopper-20b.yaml").write_text(v1)
    p = load_profile(tmp_path / "hopper-20b.yaml")
    assert p.model_classes == ("20b-class",) and p.serves("20b-class") and not p.serves("120b-class")
    jsonschema.validate(yaml.safe_load(v1), json.loads((REPO / "schemas" / "profile.schema.json").read_text()))


def test_a_schema_2_profile_names_classes_not_models(tmp_path: Path) -> None:
    e = _bad(tmp_path, "models: [gpt-oss-20b]", "classes: [20b-class]")
    assert "classes" in (e.hint or "") + e.message
    schema = json.loads((REPO / "schemas" / "profile.schema.json").read_text())
    doc = yaml.safe_load((REPO / "profiles" / "hopper-20b.yaml").read_text().replace(
        "classes: [20b-class]", "models: [gpt-oss-20b]"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)
