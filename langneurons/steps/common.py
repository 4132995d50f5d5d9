"""Shared pieces of the model steps: loading the analysed model, and where a result comes from.

The ``langneurons.steps`` modules hold one function per Snakemake rule. Each
rule's entry script in ``workflow_scripts/`` only unpacks
``snakemake.input/params/output`` and calls it, so every step is testable
without Snakemake. The workflow derives each rule's library modules (its inputs,
so that editing one reruns exactly the steps that use it) from the imports of its
script (:mod:`langneurons.imports`).

Importing this module loads no model library: torch and transformers are imported
when a model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from langneurons.errors import ConfigError
from langneurons.io import CONVERSION_RECORD, read_json

#: ``model.dtype`` names, the torch dtypes of the same name.
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


def model_record(model_params: Mapping[str, Any], model_dir: str | None) -> dict[str, Any]:
    """Which model a result comes from, for provenance (a converted GGUF: which file, by its SHA-256)."""
    if model_params["demo"]:
        return {"model": "demo", "path": model_dir}
    record = {"model": model_params["id"], "revision": model_params.get("revision")}
    if model_dir is not None:  # a GGUF the workflow converted
        conversion = read_json(Path(model_dir) / CONVERSION_RECORD)
        record.update(
            gguf_file=model_params.get("gguf_file"), gguf_package=model_params.get("gguf_package"),
            path=model_dir, gguf=conversion["gguf"],
        )  # fmt: skip
    return record


def load_model(
    reference: str | os.PathLike,
    revision: str | None = None,
    dtype: str = "float32",
    device_map: str | dict | None = None,
):
    """Load a causal LM and its tokenizer from a hub id or a local path.

    The architecture is checked from the config before any weight is loaded,
    so an unsupported model fails in seconds, not after a 100 GB download.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from langneurons.architectures import check_supported_config

    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype is {dtype!r}; use one of {', '.join(DTYPES)}")
    check_supported_config(AutoConfig.from_pretrained(reference, revision=revision), str(reference))
    model = AutoModelForCausalLM.from_pretrained(
        reference, revision=revision, dtype=getattr(torch, dtype), device_map=device_map
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(reference, revision=revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_configured_model(model_params: Mapping[str, Any], model_dir: str | None):
    """The model a workflow run analyses: the folder the workflow made (the demo model it trained, or the
    configured GGUF converted), else ``model.id`` at ``model.revision``.

    ``model_params["device_map"]`` (the workflow's ``execution.device_map``) places it on the devices;
    no result depends on it.
    """
    if model_dir is not None:
        return load_model(model_dir, None, model_params["dtype"], model_params.get("device_map"))
    return load_model(
        model_params["id"], model_params.get("revision"), model_params["dtype"], model_params.get("device_map")
    )
