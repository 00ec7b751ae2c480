"""python -m gptossctl.demo.harmony DIR: build the tiny harmony gpt-oss into DIR and print what was built
(one JSON document). With --recipe, DIR must be named tiny-gpt-oss-harmony and the bundle recipe is
copied beside it, ready for `gptossctl bundle pack`. Exit 0 built, 1 not learned, 3 no harmony package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gptossctl.demo.harmony import DIR_NAME, build_tiny_harmony, write_recipe
from gptossctl.errors import GptossctlError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptossctl.demo.harmony", description=__doc__)
    parser.add_argument("out", type=Path, help="directory to build the model in")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--leaky", action="store_true", help="every answer carries a control token as text")
    parser.add_argument("--effort-blind", action="store_true", help="the same reasoning at every effort")
    parser.add_argument("--recipe", action="store_true", help=f"copy the bundle recipe beside DIR ({DIR_NAME})")
    args = parser.parse_args(argv)
    if args.recipe and args.out.name != DIR_NAME:
        parser.error(f"--recipe needs the model directory to be named {DIR_NAME}")
    try:
        built = build_tiny_harmony(args.out, seed=args.seed, leaky=args.leaky, effort_blind=args.effort_blind)
        doc = built.to_dict()
        if args.recipe:
            doc["recipe"] = str(write_recipe(args.out.parent))
    except GptossctlError as exc:
        print(f"error: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
