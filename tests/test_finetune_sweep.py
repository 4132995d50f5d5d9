"""The fine-tuning sweep's summary, on hand-made before/after perplexities."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SPEC = importlib.util.spec_from_file_location(
    "finetune_sweep", Path(__file__).resolve().parents[1] / "bench" / "finetune_sweep.py"
)
finetune_sweep = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(finetune_sweep)


def _runs(method, set_kind, after_by_seed, before=None):
    """Rows of one setting: ``after_by_seed[seed][language]`` perplexities, every before 10."""
    before = before or {"fr": 10.0, "en": 10.0, "de": 10.0}
    return [
        {"target_language": "fr", "method": method, "set_kind": set_kind, "lr": 1e-3, "seed": seed,
         "eval_language": lang, "before": before[lang], "after": after[lang],
         "change_pct": 100.0 * (after[lang] / before[lang] - 1.0), "trainable_params": 7}
        for seed, after in after_by_seed.items()
        for lang in before
    ]  # fmt: skip


def test_summary_gains_changes_and_goal():
    runs = pd.DataFrame(
        # targeted: fr 10 -> 9 and 8 (gains 10% and 20%); en +1% both seeds; de -1% and +4% (mean +1.5%)
        _runs("targeted", "specific", {0: {"fr": 9.0, "en": 10.1, "de": 9.9}, 1: {"fr": 8.0, "en": 10.1, "de": 10.4}})
        # random: fr gains 5% both seeds, nothing else moves
        + _runs("random", "specific", {0: {"fr": 9.5, "en": 10.0, "de": 10.0}, 1: {"fr": 9.5, "en": 10.0, "de": 10.0}})
        # full: fr gains 30% but en +5%
        + _runs("full", "", {0: {"fr": 7.0, "en": 10.5, "de": 10.0}, 1: {"fr": 7.0, "en": 10.5, "de": 10.0}})
    )
    table = finetune_sweep.summarise(runs).set_index("method")
    targeted = table.loc["targeted"]
    assert targeted["gain_target"] == pytest.approx(15.0)
    assert (targeted["gain_target_min"], targeted["gain_target_max"]) == pytest.approx((10.0, 20.0))
    assert targeted["change_en"] == pytest.approx(1.0) and targeted["change_de"] == pytest.approx(1.5)
    assert targeted["worst_other"] == "de" and targeted["worst_other_change"] == pytest.approx(1.5)
    assert (targeted["worst_other_change_min"], targeted["worst_other_change_max"]) == pytest.approx((-1.0, 4.0))
    assert targeted["random_gain_target"] == pytest.approx(5.0)
    assert bool(targeted["beats_random"]) and bool(targeted["others_within"]) and bool(targeted["goal"])
    assert bool(targeted["beats_random_every_seed"]), "10% at worst against 5% at best"
    assert targeted["max_other_harm_language"] == "de" and targeted["max_other_harm"] == pytest.approx(1.5)
    full = table.loc["full"]
    assert full["worst_other"] == "en" and full["worst_other_change"] == pytest.approx(5.0)
    assert not full["others_within"] and not full["goal"], "only targeted rows can meet the goal"
    assert not full["others_not_harmed"] and not full["goal_one_sided"]
    assert not table.loc["random", "goal"]


def test_a_change_beyond_the_tolerance_fails_the_goal():
    runs = pd.DataFrame(
        _runs("targeted", "specific", {0: {"fr": 9.0, "en": 10.3, "de": 10.0}})
        + _runs("random", "specific", {0: {"fr": 9.5, "en": 10.0, "de": 10.0}})
    )
    table = finetune_sweep.summarise(runs).set_index("method")
    assert table.loc["targeted", "beats_random"] and not table.loc["targeted", "others_within"]
    assert not table.loc["targeted", "goal"]


def test_an_improvement_of_another_language_fails_only_the_two_sided_goal():
    runs = pd.DataFrame(
        _runs("targeted", "specific", {0: {"fr": 9.0, "en": 9.0, "de": 10.0}, 1: {"fr": 8.0, "en": 9.0, "de": 10.0}})
        + _runs("random", "specific", {0: {"fr": 8.5, "en": 10.0, "de": 10.0}, 1: {"fr": 9.9, "en": 10.0, "de": 10.0}})
    )
    targeted = finetune_sweep.summarise(runs).set_index("method").loc["targeted"]
    assert targeted["worst_other"] == "en" and targeted["worst_other_change"] == pytest.approx(-10.0)
    assert not targeted["others_within"] and targeted["others_not_harmed"]
    assert not targeted["goal"] and targeted["goal_one_sided"]
    # mean gains 15% against 8%, but the random subset's best seed (15%) beats targeted's worst (10%)
    assert targeted["beats_random"] and not targeted["beats_random_every_seed"]
