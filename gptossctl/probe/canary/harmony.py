"""Harmony conformance of one answer: what a client of the OpenAI API must never see from a gpt-oss
service. vLLM parses the harmony format (channels, tool calls) into `content`, `reasoning` and
`tool_calls`; when parsing slips, control markers leak into the text, a tool call carries arguments that
are not JSON, or the final answer is empty (everything went to the analysis channel). Each is counted."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

# The harmony control tokens (openai-harmony's special tokens that structure a conversation).
MARKERS = ("<|channel|>", "<|message|>", "<|start|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>")
FAILURES = ("leaked_marker", "bad_tool_call", "empty_final")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # as streamed: must parse as a JSON object


@dataclass(frozen=True)
class Conformance:
    failures: tuple[str, ...]  # a subset of FAILURES, in that order
    detail: tuple[str, ...]  # what was seen, one line per failure

    @property
    def ok(self) -> bool:
        return not self.failures


def check_answer(content: str, reasoning: str, tool_calls: Sequence[ToolCall]) -> Conformance:
    """Score one complete answer. A final answer is empty when there is neither text nor a tool call."""
    failures: list[str] = []
    detail: list[str] = []
    leaked = [m for m in MARKERS if m in content or m in reasoning]
    if leaked:
        failures.append("leaked_marker")
        where = "content" if any(m in content for m in leaked) else "reasoning"
        detail.append(f"harmony marker(s) {', '.join(leaked)} leaked into the {where}")
    bad = [c for c in tool_calls if not _json_object(c.arguments)]
    if bad:
        failures.append("bad_tool_call")
        detail.append("tool call(s) with arguments that are not a JSON object: "
                      + ", ".join(f"{c.name or '?'}({c.arguments[:60]!r})" for c in bad))
    if not content.strip() and not tool_calls:
        failures.append("empty_final")
        detail.append("empty final answer" + (" (reasoning only)" if reasoning.strip() else ""))
    return Conformance(tuple(failures), tuple(detail))


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False
