# Paths and helpers shared by the rule files.
from pathlib import Path

LIBRARY = Path(workflow.basedir) / "langneurons"
RESULTS = f"results/{config['run']}"
LOGS = f"logs/{config['run']}"
BENCHMARKS = f"benchmarks/{config['run']}"
LANGUAGES = list(config["languages"])
SHARDS = config["scoring"]["shards"]


wildcard_constraints:
    language=r"[a-z]{2,3}(_[A-Za-z]+)?",
    shard=r"\d+",


def canonical(value):
    """A config value with its mapping keys sorted, so that reordering YAML keys reruns nothing."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def library(*modules):
    """The library modules a step uses, as inputs: editing one reruns the steps that use it.

    A package (a folder, e.g. ``evaluation``) stands for all of its modules.
    """
    paths = []
    for module in modules:
        path = LIBRARY / module
        paths += sorted(str(p) for p in path.glob("*.py")) if path.is_dir() else [str(path)]
    return paths


def model_dir():
    """The demo model's directory when the run trains it; nothing when it loads a hub model."""
    return [f"{RESULTS}/model"] if config["model"]["demo"] else []


def ablation_grid_on():
    return bool(config["ablation"]["conditions"])


def finetune_grid_on():
    return bool(config["finetune"]["methods"]) and config["finetune"]["targets"] != []


def final_outputs():
    outputs = [f"{RESULTS}/neurons/neurons.parquet", f"{RESULTS}/logit_lens/all.parquet", *figure_outputs()]
    if config["model"]["demo"]:
        outputs.append(f"{RESULTS}/model")
    if ablation_grid_on():
        outputs.append(f"{RESULTS}/ablation/grid.parquet")
    if finetune_grid_on():
        outputs.append(f"{RESULTS}/finetune/results.parquet")
    return outputs
