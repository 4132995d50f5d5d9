"""The stability step's peak memory is bounded by one language's scores, whatever the number of languages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "stability_memory.py"


def test_stability_peak_memory_does_not_grow_with_the_languages():
    args = ["--languages", "3", "6", "--docs", "160", "--layers", "8", "--ffn", "4096", "--attn", "1024", "--kv", "256"]
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, check=True)
    three, six = json.loads(done.stdout.strip().splitlines()[-1])
    one_language = three["one_language_scores_mb"]
    assert one_language > 20, "scores large enough to stand out of the measurement's noise"
    # loading every language would take at least all of their scores: 3 and 6 languages' worth
    assert three["peak_above_imports_mb"] < 2 * one_language, three
    assert six["peak_above_imports_mb"] < 2 * one_language, six
    assert six["peak_above_imports_mb"] < three["peak_above_imports_mb"] + one_language / 2, (three, six)
