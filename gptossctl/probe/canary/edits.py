"""Edits-to-accept: how much a reviewer must change an answer before accepting it.

Measured as the Levenshtein distance (rapidfuzz) between the answer and the nearest reference answer,
after trimming surrounding whitespace, and normalised by the longer of the two (0 = accepted as is,
1 = rewritten entirely). Summarised per workflow as median, p90 and the share accepted with no edit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gptossctl.probe.canary.stats import percentile


@dataclass(frozen=True)
class Edit:
    chars: int  # character insertions, deletions and substitutions
    normalised: float  # chars / max(len(answer), len(reference)), in [0, 1]
    reference: str  # the nearest reference

    @property
    def accepted_unedited(self) -> bool:
        return self.chars == 0

    def to_dict(self) -> dict[str, Any]:
        return {"chars": self.chars, "normalised": self.normalised, "reference": self.reference,
                "no_edit": self.accepted_unedited}


def edits_to_accept(answer: str, references: Sequence[str]) -> Edit:
    """The edit to the nearest of `references` (at least one)."""
    from rapidfuzz.distance import Levenshtein

    got = answer.strip()
    best: Edit | None = None
    for ref in references:
        want = ref.strip()
        chars = int(Levenshtein.distance(got, want))
        edit = Edit(chars, Levenshtein.normalized_distance(got, want), ref)
        if best is None or (edit.normalised, edit.chars) < (best.normalised, best.chars):
            best = edit
    if best is None:
        raise ValueError("edits_to_accept needs at least one reference")
    return best


def summarise(edits: Sequence[Edit]) -> dict[str, Any]:
    """Median and p90 of the normalised distance, and the share of answers accepted with no edit."""
    values = [e.normalised for e in edits]
    return {"cases": len(values), "median": percentile(values, 50), "p90": percentile(values, 90),
            "no_edit_share": (sum(e.accepted_unedited for e in edits) / len(edits)) if edits else None,
            "mean_chars": (sum(e.chars for e in edits) / len(edits)) if edits else None}
