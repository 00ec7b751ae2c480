"""Invariants that hold whatever was rendered: every unit of the instance is a rendering of gptossctl's OWN
template (install/units.py: the same directives, no Exec*= prefix), and every environment file holds only
what the installer sets or the profile allowlist allows (hardware/profiles.py PROFILE_ENV). They catch what an
exact comparison with a re-rendering would miss when the inputs of that rendering were changed too (the
release's copy of the profile edited along with an environment file). One loop over every unit of the serving set:
its replicas and the router."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from gptossctl.compliance.evidence import Evidence, parse_env, read_text
from gptossctl.hardware.profiles import rendered_env_problems
from gptossctl.install.router import ROUTER_FILLED, ROUTER_TEMPLATE, router_unit_problems
from gptossctl.install.units import VLLM_FILLED, VLLM_TEMPLATE, directive_problems, own_template


def instance_units(ev: Evidence) -> list[tuple[str, Path, str, Collection[str]]]:
    """(unit name, installed path, gptossctl's template it renders, keys its placeholders fill) of every unit."""
    out: list[tuple[str, Path, str, Collection[str]]] = [
        (m.unit, m.path, VLLM_TEMPLATE, VLLM_FILLED) for m in ev.serving.members]
    return out + ([(ev.serving.router.unit, ev.serving.router.path, ROUTER_TEMPLATE, ROUTER_FILLED)] if ev.serving.router else [])


def unit_directive_problems(ev: Evidence) -> list[str]:
    bad = []
    for name, path, template, filled in instance_units(ev):
        text = read_text(path)
        if text is not None:
            problems = router_unit_problems(text, own_template(template)) if template == ROUTER_TEMPLATE else \
                directive_problems(text, own_template(template), name, filled=filled)
            bad += [f"{ev.live(path)}: {p}" for p in problems]
    return bad


def env_allowlist_problems(ev: Evidence) -> list[str]:
    files = ev.member_envs
    return [f"{name}: {p}" for name, text in files.items() if text is not None
            for p in rendered_env_problems(sorted(parse_env(text)))]
