"""The canary's confidence logic, pure (issue 22, point 7): a seeded bootstrap interval of the change, judged
against a stated tolerance, with a minimum sample size; and the verdict that follows from the rows."""

from __future__ import annotations

import pytest

from gptossctl.probe.canary.compare import judge_rows, verdict_of
from gptossctl.probe.canary.stats import (
    MIN_SAMPLES,
    bootstrap_change,
    compare_samples,
    judge_interval,
    median,
)


@pytest.mark.parametrize(("interval", "lower_is_better", "expected"), [
    ((-0.05, 0.05), True, "same"),
    ((-0.2, 0.2), True, "same"),  # the band's edges are inside it
    ((0.25, 0.9), True, "worse"),  # a latency wholly above +20 %
    ((0.25, 0.9), False, "better"),  # a throughput wholly above +20 %
    ((-0.9, -0.3), True, "better"),
    ((-0.9, -0.3), False, "worse"),
    ((0.1, 0.3), True, "inconclusive"),  # straddles +20 %: neither same nor worse
    ((-0.5, 0.5), True, "inconclusive"),  # wider than the band on both sides
])
def test_judge_interval_against_the_tolerance(interval: tuple[float, float], lower_is_better: bool,
                                              expected: str) -> None:
    assert judge_interval(interval, 0.2, lower_is_better=lower_is_better) == expected


def test_the_bootstrap_is_reproducible_and_seeded() -> None:
    a = [0.100 + 0.0001 * ((i * i) % 97) for i in range(40)]
    b = [0.100 + 0.0001 * ((i * 31) % 89) for i in range(40)]
    first = bootstrap_change(a, b, median, relative=True)
    assert first == bootstrap_change(a, b, median, relative=True)  # same samples, same interval
    assert first is not None and first[0] <= first[1]
    assert bootstrap_change(a, b, median, relative=True, seed=1) != first


def test_constant_samples_give_the_exact_change() -> None:
    lo, hi = bootstrap_change([0.15] * 30, [0.05] * 30, median, relative=True) or (0, 0)
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    assert bootstrap_change([3.0] * 5, [1.0] * 5, median, relative=False) == (pytest.approx(2.0), pytest.approx(2.0))


def test_a_three_fold_latency_is_worse_and_its_mirror_better() -> None:
    slow = [0.150 + 0.003 * (i % 9) for i in range(30)]
    fast = [0.050 + 0.003 * (i % 9) for i in range(30)]
    c = compare_samples(slow, fast, median, tolerance=0.2, lower_is_better=True)
    assert c.judgement == "worse" and c.interval is not None and c.interval[0] > 0.2 and c.samples == (30, 30)
    assert compare_samples(fast, slow, median, tolerance=0.2, lower_is_better=True).judgement == "better"


def test_samples_of_one_distribution_are_never_worse() -> None:
    base = [0.150 + 0.004 * ((i * 7) % 11) for i in range(60)]
    for seed in range(5):
        c = compare_samples(base[::2], base[1::2], median, tolerance=0.2, lower_is_better=True, seed=seed)
        assert c.judgement == "same", c


def test_below_the_minimum_sample_size_is_not_enough_data() -> None:
    few = MIN_SAMPLES - 1
    c = compare_samples([1.0] * few, [0.1] * 100, median, tolerance=0.2, lower_is_better=True)
    assert (c.judgement, c.interval, c.samples) == ("not enough data", None, (few, 100))
    assert compare_samples([1.0] * 3, [0.1] * 3, median, tolerance=0.2, lower_is_better=True,
                           min_samples=3).judgement == "worse"


def _rows(ours: list[float], theirs: list[float]) -> list[dict[str, object]]:
    return judge_rows({"e2el_p50": median(ours), "correctness": 1.0}, {"e2el_p50": median(theirs), "correctness": 1.0},
                      0.2, samples={"e2el_p50": (ours, theirs, median)}, min_samples=3)


def test_rows_state_interval_tolerance_and_samples() -> None:
    row = _rows([0.15] * 5, [0.05] * 5)[0]
    assert row["judgement"] == "worse" and row["tolerance"] == 0.2 and row["samples"] == [5, 5]
    assert row["interval"] == [pytest.approx(2.0), pytest.approx(2.0)] and row["relative"] is True
    quality = _rows([0.15] * 5, [0.05] * 5)[1]
    assert quality["judgement"] == "same" and quality["interval"] is None  # a count over the same cases


def test_the_verdict_is_on_par_only_when_every_metric_is_the_same() -> None:
    assert verdict_of(_rows([0.10] * 5, [0.10] * 5)) == ("on par", [])
    noisy = [0.08, 0.10, 0.12, 0.14, 0.16]
    assert verdict_of(_rows(noisy, [0.10, 0.11, 0.12, 0.13, 0.10])) == ("inconclusive", ["end-to-end latency median"])
    assert verdict_of(_rows([0.1, 0.1], [0.1, 0.1])) == ("not enough data", ["end-to-end latency median"])
    assert verdict_of(_rows([0.3] * 5, [0.1] * 5))[0] == "worse"
