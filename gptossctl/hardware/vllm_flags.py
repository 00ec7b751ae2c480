"""The long option names `vllm serve` accepts, per vLLM minor version (schemas/vllm-flags-X.Y.json).

A profile's `vllm.flags` keys become `--key` arguments through `vllm serve --config`, and vLLM's argparse
accepts abbreviations (`--max-model` is `--max-model-len`): a key is honest only when it is one of vLLM's own
option names, spelled in full. Profiles are checked against the lists of every vLLM version their
`vllm.versions` admit (at pack and whenever a profile is loaded); install checks the release's own vLLM again
(gptossctl.install.environment.check_flags, with FLAGS_PROGRAM). scripts/vllm_flags.py regenerates a list.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from typing import Any

from gptossctl.resources import data_dir

FLAGS_SCHEMA = "gptossctl.vllm-flags/1"

# Run by a release's own Python: vLLM's serve parser, its option strings, as one JSON line.
FLAGS_PROGRAM = """
import json
import vllm
from vllm.utils.argparse_utils import FlexibleArgumentParser
try:
    from vllm.entrypoints.common.cli_args import make_arg_parser
except ImportError:
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:
        from vllm.entrypoints.openai.cli_args import make_arg_parser
parser = make_arg_parser(FlexibleArgumentParser())
options = sorted({s for a in parser._actions for s in a.option_strings})
print(json.dumps({"version": vllm.__version__, "options": options}))
"""


def flags_document(version: str, source: str, flags: list[str]) -> dict[str, Any]:
    return {"schema": FLAGS_SCHEMA, "vllm": version, "source": source,
            "flags": sorted(f.removeprefix("--") for f in flags if f.startswith("--"))}


@cache
def known_lists() -> dict[str, frozenset[str]]:
    """{vLLM version the list was taken from: its long option names without dashes}."""
    out = {}
    for path in sorted(data_dir("schemas").glob("vllm-flags-*.json")):
        doc = json.loads(path.read_text())
        if doc.get("schema") != FLAGS_SCHEMA:
            raise ValueError(f"{path}: not a {FLAGS_SCHEMA} document")
        out[str(doc["vllm"])] = frozenset(doc["flags"])
    return out


def lists_for(versions: str) -> dict[str, frozenset[str]]:
    """The lists of the vLLM versions a profile's `vllm.versions` specifier admits."""
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(versions)
    return {v: names for v, names in known_lists().items() if spec.contains(v, prereleases=True)}


def unknown_flags(keys: list[str], versions: str) -> list[str]:
    """One message per key that is not, spelled in full, an option of every vLLM version the profile admits
    (nearest real names given); a profile whose versions no list covers cannot be checked, so it is refused."""
    lists = lists_for(versions)
    if not lists:
        return [f"no list of vLLM's serve options covers vllm.versions {versions!r} (lists: "
                f"{', '.join(sorted(known_lists()))}): narrow the versions, or add the list with "
                "scripts/vllm_flags.py"]
    out = []
    for key in keys:
        missing = sorted(v for v, names in lists.items() if key not in names)
        if missing:
            everything = sorted(set().union(*lists.values()))
            near = difflib.get_close_matches(key, everything, n=3, cutoff=0.6)
            near += [n for n in everything if n.startswith(key) and n not in near][:3]
            out.append(f"flag {key!r} is not an option of vLLM {', '.join(missing)} (write vLLM's own option "
                       f"name in full" + (f"; nearest: {', '.join(near)}" if near else "") + ")")
    return out
