"""Workflow step: the built-in demo model, trained on the sampled corpora's ``train`` split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from langneurons import corpora
from langneurons.demo_model import DemoModelConfig, train_demo_model


def train_demo_model_step(corpus_paths: Sequence[str], model_dir: str, settings: Mapping[str, Any]) -> None:
    frames = [corpora.read_corpus(path) for path in corpus_paths]
    docs = pd.concat(frames, ignore_index=True)
    config = DemoModelConfig.from_dict(dict(settings))
    train_demo_model(docs[docs["split"] == "train"], docs[docs["split"] == "eval"], model_dir, config)
