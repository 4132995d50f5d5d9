"""The workflow configuration: its schema's defaults, and every check the schema cannot express.

``schemas/config.schema.yaml`` is the one source of defaults and documentation: :func:`apply_schema`
validates a configuration against it and fills in what is unset. :func:`check_config` then checks what
a JSON schema cannot say (a language the corpus lacks, a set kind a later step uses but selection does
not build, ...). Both run when Snakemake parses the workflow, before any job, and raise
:class:`~langneurons.errors.ConfigError` naming the key, the value and the fix.

Torch-free and offline: planning a run never loads a model library or touches the hub.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from langneurons.errors import ConfigError
from langneurons.eval_sources import BENCHMARKS, benchmark_languages, local_candidates
from langneurons.models import (
    GGUF_EXTRA,
    GGUF_MAGIC,
    GGUFSource,
    gguf_source,
    looks_like_local_path,
    package_installed,
)

#: Settings that cannot change a result, and moved out of the sections whose values are job parameters:
#: old key -> new key. A configuration that still sets an old key is refused with the new place.
MOVED_TO_EXECUTION = {
    ("scoring", "batch_size"): ("execution", "scoring", "batch_size"),
    ("scoring", "chunk_bytes"): ("execution", "scoring", "chunk_bytes"),
    ("model", "device_map"): ("execution", "device_map"),
    ("logit_lens", "batch_size"): ("execution", "logit_lens", "batch_size"),
    ("evaluation", "batch_size"): ("execution", "evaluation", "batch_size"),
}


def load_schema(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, mappings merged key by key (as Snakemake merges config files)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _defaults_validator(schema: Mapping[str, Any]):
    """A validator that also fills in each unset property's default (a copy), as it descends."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, property_schema in properties.items():
                if "default" in property_schema and name not in instance:
                    instance[name] = copy.deepcopy(property_schema["default"])
        yield from validate_properties(validator, properties, instance, subschema)

    return validators.extend(Draft202012Validator, {"properties": properties_with_defaults})(schema)


def _check_moved_keys(config: Mapping[str, Any]) -> None:
    for (section, key), new in MOVED_TO_EXECUTION.items():
        if isinstance(config.get(section), Mapping) and key in config[section]:
            raise ConfigError(
                f"{section}.{key} is an execution setting: set it as {'.'.join(new)} (no result depends on it, "
                f"so changing it there reruns nothing)"
            )


def apply_schema(config: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``config`` against ``schema`` and fill in every unset default, in place; returns it."""
    from jsonschema.exceptions import best_match

    _check_moved_keys(config)
    error = best_match(_defaults_validator(schema).iter_errors(config))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "the configuration"
        raise ConfigError(f"{where}: {error.message} (schemas/config.schema.yaml documents every key)")
    return config


def resolve_config(layers: list[Mapping[str, Any]], schema: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration a run uses: ``layers`` merged in order, with the schema's defaults, checked."""
    config: dict[str, Any] = {}
    for layer in layers:
        config = merge(config, layer)
    apply_schema(config, schema)
    check_config(config)
    return config


# ---- checks the schema cannot express -----------------------------------------------------------


def _check_languages(config: Mapping[str, Any]) -> None:
    from langneurons import corpora

    source = config["corpus"]["source"]
    languages = list(config["languages"])
    available = corpora.available_languages(source)
    if source["source"] == "demo" or available:
        unknown = [lang for lang in languages if lang not in available]
        if unknown:
            raise ConfigError(
                f"languages: {unknown} not available from corpus source {source['source']!r}; "
                f"it has {', '.join(available)}. Remove them or configure a source that has them."
            )
    model = config["model"]
    if model["demo"]:
        unknown = [lang for lang in model["demo_languages"] if lang not in available]
        if unknown and (source["source"] == "demo" or available):
            raise ConfigError(
                f"model.demo_languages: {unknown} not available from corpus source {source['source']!r}, on which "
                f"the demo model trains; it has {', '.join(available)}"
            )
        missing = [lang for lang in languages if lang not in model["demo_languages"]]
        if missing:
            raise ConfigError(
                f"languages {missing} are not in model.demo_languages {model['demo_languages']}: the demo model "
                "would not know them. Add them to model.demo_languages (this retrains the demo model)."
            )
    elif not (model["id"] or model["gguf_file"] or model["gguf_package"]):
        raise ConfigError(
            "model.id is empty while model.demo is false: set a hub id or a local path (or a GGUF: model.gguf_file "
            "or model.gguf_package)"
        )


def _check_targets(config: Mapping[str, Any]) -> None:
    languages = list(config["languages"])
    for section in ("ablation", "finetune"):
        unknown = [lang for lang in config[section]["targets"] or [] if lang not in languages]
        if unknown:
            raise ConfigError(
                f"{section}.targets: {unknown} are not in `languages` {languages}, so they have no scores or "
                f"neuron sets; add them to `languages` or remove them from {section}.targets"
            )


def _check_detectors(config: Mapping[str, Any]) -> None:
    detectors = config["selection"]["detectors"]
    unbuilt = [d for d in config["ablation"]["detectors"] if d not in detectors]
    if unbuilt:
        raise ConfigError(
            f"ablation.detectors uses {unbuilt} but selection.detectors {list(detectors)} does not run it: "
            "add it to selection.detectors, or remove it from ablation.detectors"
        )
    if "lape" in detectors and "ffn" not in config["scoring"]["sites"]:
        raise ConfigError(
            "selection.detectors has 'lape', which counts FFN activations, but scoring.sites "
            f"{config['scoring']['sites']} leaves out 'ffn': add 'ffn' to scoring.sites or drop 'lape'"
        )


def _check_set_kinds(config: Mapping[str, Any]) -> None:
    built = config["selection"]["set_kinds"]
    consumers = {
        "ablation.set_kinds": config["ablation"]["set_kinds"],
        "finetune.set_kind": [config["finetune"]["set_kind"]],
        "logit_lens.deactivate": [config["logit_lens"]["deactivate"]],
        "figures.set_kind": [config["figures"]["set_kind"]],
    }
    for field, kinds in consumers.items():
        missing = [kind for kind in kinds if kind and kind not in built]
        if missing:
            raise ConfigError(
                f"{field} uses {missing} but selection.set_kinds {list(built)} does not build that set: "
                f"add it to selection.set_kinds, or change {field}"
            )


def _check_document_counts(config: Mapping[str, Any]) -> None:
    available = config["corpus"]["split_sizes"]["finetune"]
    wanted = config["finetune"]["training"]["n_docs"]
    grid_on = bool(config["finetune"]["methods"]) and config["finetune"]["targets"] != []
    if grid_on and available != "all" and wanted > available:
        raise ConfigError(
            f"finetune.training.n_docs={wanted} but corpus.split_sizes.finetune={available} documents per language "
            "are sampled for fine-tuning: lower finetune.training.n_docs or raise corpus.split_sizes.finetune"
        )


def _check_evaluation(config: Mapping[str, Any]) -> None:
    """Each benchmark metric has data: its languages are the run's, its local source exists and holds them."""
    languages = list(config["languages"])
    for metric in config["evaluation"]["metrics"]:
        if metric not in BENCHMARKS:
            continue
        bench = config["evaluation"]["benchmarks"][metric]
        field = f"evaluation.benchmarks.{metric}"
        unknown = [lang for lang in bench["languages"] or [] if lang not in languages]
        if unknown:
            raise ConfigError(
                f"{field}.languages: {unknown} are not in `languages` {languages}; remove them or add them to "
                "`languages`"
            )
        source = bench["source"]
        if source is not None and not Path(source).exists():
            raise ConfigError(
                f"{field}.source={source!r}: {str(Path(source).absolute())!r} does not exist. Give a folder of "
                f"{metric} files (or one file), relative to the working directory, or null for the hub"
            )
        wanted = bench["languages"] if bench["languages"] is not None else languages
        lacking = [lang for lang in wanted if lang not in benchmark_languages(metric, source, bench["split"], wanted)]
        if source is None:
            where = f"the hub ({BENCHMARKS[metric].hub_path} has {', '.join(BENCHMARKS[metric].languages)})"
        else:
            example = local_candidates(metric, (lacking or wanted)[0], bench["split"])
            where = f"{source!r} (for {(lacking or wanted)[0]!r} it looked for {example})"
        if bench["languages"] is not None and lacking:
            raise ConfigError(
                f"{field}.languages: no {metric} data for {lacking} in {where}; remove them, or set "
                f"{field}.source to data that has them"
            )
        if len(lacking) == len(wanted):
            raise ConfigError(
                f"evaluation.metrics has {metric!r}, but no language of the run ({wanted}) has {metric} data in "
                f"{where}: set {field}.source, or remove {metric!r} from evaluation.metrics"
            )


def check_model_reference(model_config: Mapping[str, Any]) -> None:
    """Check, without the network, that a model given by local path exists and looks like a model.

    ``model.id`` counts as a local path when it cannot be a hub id (see
    :func:`langneurons.models.looks_like_local_path`); then it must be a folder holding a
    ``config.json``. A configured GGUF must be an existing GGUF file (unless it sits in a hub
    repository), and ``model.gguf_package`` must be installed. The demo model takes none of them.
    """
    reference = str(model_config.get("id") or "")
    ggufs = {key: model_config.get(key) for key in ("gguf_file", "gguf_package") if model_config.get(key)}
    if model_config.get("demo"):
        chosen = {key: model_config.get(key) for key in ("id", "gguf_file", "gguf_package") if model_config.get(key)}
        if chosen:
            key, value = next(iter(chosen.items()))
            raise ConfigError(
                f"model.{key}={value!r} is set, but model.demo is true, so the demo model would be trained and "
                f"analysed instead: set model.demo: false to analyse model.{key}, or remove it"
            )
        return
    if len(ggufs) == 2:
        raise ConfigError(
            f"model.gguf_file={ggufs['gguf_file']!r} and model.gguf_package={ggufs['gguf_package']!r} are both set: "
            "the package's assemble() gives its own file. Keep one of the two."
        )
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


def _gguf_reader_versions() -> tuple[int, ...] | None:
    """The GGUF versions the installed ``gguf`` package reads (transformers reads GGUF with it); None without it."""
    try:
        from gguf.gguf_reader import READER_SUPPORTED_VERSIONS
    except ImportError:
        return None
    return tuple(READER_SUPPORTED_VERSIONS)


def _check_gguf_source(source: GGUFSource, model_config: Mapping[str, Any]) -> None:
    if source.kind == "package":
        if not package_installed(source.where):
            raise ConfigError(
                f"model.gguf_package={source.where!r} is not installed: pip install {source.where} "
                "(or remove model.gguf_package and set model.gguf_file to the .gguf path)"
            )
        field = f"model.gguf_package={source.where!r}"
    else:
        field = f"model.gguf_file={model_config['gguf_file']!r}"
        if model_config.get("id") and source.where != os.path.expanduser(str(model_config["gguf_file"])):
            field += f" (in model.id={model_config['id']!r})"
    versions = _gguf_reader_versions()
    if versions is None:
        raise ConfigError(
            f"{field}: reading a GGUF needs the optional package gguf, which is not installed: {GGUF_EXTRA}"
        )
    if source.kind != "path":  # a package's file is checked by its assemble(); a hub file is downloaded later
        return
    path = Path(source.where)
    if not path.is_file():
        raise ConfigError(
            f"{field}: {str(path.absolute())!r} is not a file. Give the .gguf file's path, or its name inside "
            "the folder model.id."
        )
    with open(path, "rb") as handle:
        header = handle.read(len(GGUF_MAGIC) + 4)
    if header[: len(GGUF_MAGIC)] != GGUF_MAGIC:
        raise ConfigError(f"{field}: {str(path)!r} is not a GGUF file (it does not start with {GGUF_MAGIC!r})")
    version = header[len(GGUF_MAGIC) :]
    if not {int.from_bytes(version, "little"), int.from_bytes(version, "big")} & set(versions):
        raise ConfigError(
            f"{field}: {str(path)!r} is a GGUF file of version {int.from_bytes(version, 'little')} (or damaged); the "
            f"installed gguf package reads versions {', '.join(map(str, versions))}. Re-export the file with a current "
            "llama.cpp, or upgrade gguf."
        )


def _check_model(config: Mapping[str, Any]) -> None:
    check_model_reference(config["model"])


def _check_corpus_files(config: Mapping[str, Any]) -> None:
    """The files source's files exist, with a known format, for every language a job samples."""
    from langneurons import corpora

    model = config["model"]
    sampled = dict.fromkeys([*config["languages"], *(model["demo_languages"] if model["demo"] else [])])
    try:
        corpora.check_source_files(config["corpus"]["source"], list(sampled))
    except corpora.CorpusError as error:
        raise ConfigError(f"corpus.{error}") from None


def top_k_label(value: float | int) -> str:
    """The canonical, file-name-safe name of a top-k: ``0.25`` (a fraction of each site) or ``64`` (a count)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"selectivity.top_k has {value!r}: give fractions in (0, 1) or whole counts >= 1")
    if value >= 1:
        if value != int(value):
            raise ConfigError(f"selectivity.top_k has {value!r}: a count (>= 1) must be a whole number")
        return str(int(value))
    return format(Decimal(repr(float(value))).normalize(), "f")


def parse_top_k_label(label: str) -> float | int:
    """The top-k a :func:`top_k_label` name stands for."""
    value = float(label) if "." in label else int(label)
    if top_k_label(value) != label:
        raise ConfigError(f"top-k name {label!r} is not canonical; write {top_k_label(value)!r}")
    return value


def site_top_k(value: float | int, sites: Sequence[str]) -> dict[str, float | int]:
    """One top-k for every scored site (the sweep varies them together)."""
    return {site: value for site in sites}


def _check_selectivity(config: Mapping[str, Any]) -> None:
    sweep, languages = config["selectivity"], list(config["languages"])
    if not sweep["methods"]:
        return
    for value in sweep["top_k"]:
        top_k_label(value)
    unknown = [lang for lang in sweep["targets"] or [] if lang not in languages]
    if unknown:
        raise ConfigError(
            f"selectivity.targets: {unknown} are not in `languages` {languages}; add them to `languages` or remove "
            "them from selectivity.targets"
        )
    wide = [kind for kind in sweep["set_kinds"] if kind.startswith("shared_by_at_most-")]
    wide = [kind for kind in wide if int(kind.rpartition("-")[2]) > len(languages)]
    if wide:
        raise ConfigError(
            f"selectivity.set_kinds: {wide} count more languages than the {len(languages)} in `languages`; use "
            f"shared_by_at_most-1 .. shared_by_at_most-{len(languages)}"
        )
    if len(languages) < 2:
        raise ConfigError(
            f"selectivity compares a language's damage with the others': `languages` {languages} needs two"
        )


#: Every check, in the order they run.
CHECKS = (
    _check_languages,
    _check_model,
    _check_corpus_files,
    _check_targets,
    _check_detectors,
    _check_set_kinds,
    _check_document_counts,
    _check_selectivity,
    _check_evaluation,
)


def check_config(config: Mapping[str, Any]) -> None:
    """The checks the schema cannot express, on a configuration the schema has filled in (:func:`apply_schema`)."""
    for check in CHECKS:
        check(config)
