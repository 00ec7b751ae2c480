"""The one way gptossctl reads the YAML people write (recipes, profiles, canary suites): bounded size, no
aliases (a "billion laughs" document expands exponentially in the validator), no deep nesting, then strict
validation with the line of every problem, so a sysadmin fixes the file without reading code."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from gptossctl.errors import UsageError
from gptossctl.fsutil import read_text

YAML_LIMIT = 4 << 20
MAX_DEPTH = 64
M = TypeVar("M")


_LOADER: Any = None


def _loader() -> Any:
    """PyYAML's SafeLoader that refuses aliases and deep nesting while composing (built once, lazily: yaml is
    not imported for commands that never read YAML)."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class Loader(yaml.SafeLoader):
            depth = 0

            def compose_node(self, parent: Any, index: Any) -> Any:
                if self.check_event(yaml.AliasEvent):
                    raise yaml.MarkedYAMLError(None, None, "aliases (*name) are not allowed in gptossctl files",
                                               self.peek_event().start_mark)  # type: ignore[no-untyped-call]
                self.depth += 1
                try:
                    if self.depth > MAX_DEPTH:
                        raise yaml.MarkedYAMLError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                   self.peek_event().start_mark)  # type: ignore[no-untyped-call]
                    return super().compose_node(parent, index)
                finally:
                    self.depth -= 1

            def construct_mapping(self, node: Any, deep: bool = False) -> Any:
                # A key given twice is ambiguous (the last one silently wins in PyYAML): refuse it, naming it.
                seen: set[Any] = set()
                for key_node, _value in node.value:
                    key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
                    if key in seen:
                        raise yaml.MarkedYAMLError(None, None, f"key {str(key)[:60]!r} is given twice",
                                                   key_node.start_mark)  # type: ignore[no-untyped-call]
                    seen.add(key)
                return super().construct_mapping(node, deep=deep)

        _LOADER = Loader
    return _LOADER


def parse_yaml(text: str, *, where: str, what: str, code: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass without aliases
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UsageError(f"{where}{line}: not valid YAML ({str(problem)[:200]})", code=code,
                         hint=f"fix the {what} at that line (YAML, no aliases, at most {MAX_DEPTH} levels deep)") from None
    except RecursionError:
        raise UsageError(f"{where}: nested too deeply", code=code, hint=f"give a {what} of ordinary shape") from None


def load_model(path: Path, model: type[M], *, what: str, code: str, schema: str | None = None) -> tuple[M, str]:
    """Read, parse and validate one YAML file into `model` (a pydantic model); returns it and the text."""
    text = read_text(path, what=what, code=code, limit=YAML_LIMIT)
    doc = parse_yaml(text, where=str(path), what=what, code=code)
    return validate(model, doc, text=text, where=str(path), what=what, code=code, schema=schema), text


def validate(model: type[M], doc: Any, *, text: str, where: str, what: str, code: str,
             schema: str | None = None) -> M:
    from pydantic import ValidationError

    if not isinstance(doc, dict):
        raise UsageError(f"{where}: a {what} is a YAML mapping, this is {'empty' if doc is None else type(doc).__name__}",
                         code=code, hint=f"start from a shipped {what} and edit it"
                         + (f" (schema: {schema})" if schema else ""))
    try:
        return model.model_validate(doc)  # type: ignore[attr-defined, no-any-return]
    except ValidationError as exc:
        problems = "; ".join(f"line {yaml_line(text, e['loc']) or '?'}: {'.'.join(map(str, e['loc'])) or '(top)'}: "
                             f"{e['msg']}" for e in exc.errors()[:20])
        raise UsageError(f"{where}: {len(exc.errors())} problem(s) in the {what}", code=code,
                         hint=problems + (f" (schema: {schema})" if schema else "")) from None
    except RecursionError:
        raise UsageError(f"{where}: nested too deeply", code=code, hint=f"give a {what} of ordinary shape") from None


def yaml_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the node at `loc` (keys and list indexes), or of its nearest parent."""
    import yaml

    try:
        node = yaml.compose(text, Loader=_loader())
    except (yaml.YAMLError, RecursionError):
        return None
    line = node.start_mark.line + 1 if node else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
