"""Published JSON Schemas for the files people write: bundle recipes and hardware profiles.

`python -m gptossctl.schemas [DIR]` writes them (default: schemas/); a test keeps the committed copies
equal to what the models generate, so editors and CI can validate recipes and profiles.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from gptossctl.hardware.profiles import Profile
from gptossctl.pack.spec import BundleSpec


def generate() -> dict[str, dict[str, Any]]:
    out = {}
    for name, model, title in (("bundle-spec", BundleSpec, "gptossctl bundle recipe"),
                               ("profile", Profile, "gptossctl hardware profile")):
        schema = model.model_json_schema(by_alias=True)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://gptossctl.invalid/schemas/{name}.schema.json"
        schema["title"] = title
        out[f"{name}.schema.json"] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> None:
    target = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "schemas"
    target.mkdir(parents=True, exist_ok=True)
    for name, schema in generate().items():
        (target / name).write_text(render(schema))
        print(target / name)


if __name__ == "__main__":
    main(sys.argv[1:])
