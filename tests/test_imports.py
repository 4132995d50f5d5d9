"""Which library modules a workflow script runs (each rule's rerun-on-edit inputs), and light imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from langneurons.imports import ImportWalkError, library_files, library_modules

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "langneurons"
SCRIPTS = sorted((REPO / "workflow_scripts").glob("*.py"))
HEAVY = ("torch", "transformers", "accelerate")


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_walk_follows_every_kind_of_import_transitively(tmp_path):
    package = _package(
        tmp_path,
        {
            "pkg/__init__.py": "__version__ = '1'\n",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "import pkg.sub.c\n",
            "pkg/sub/__init__.py": "from .d import x\n",
            "pkg/sub/c.py": "import os\n",
            "pkg/sub/d.py": "x = 1\n\ndef f():\n    from pkg.e import y\n    return y\n",
            "pkg/e.py": "from pkg.a import *\ny = 2\n",  # a cycle back to a
            "pkg/unused.py": "import pkg.a\n",
            "script.py": "import json\nfrom pkg.a import b\n",
        },
    )
    found = {path.relative_to(package).as_posix() for path in library_modules(tmp_path / "script.py", package)}
    assert found == {"a.py", "b.py", "sub/__init__.py", "sub/c.py", "sub/d.py", "e.py"}


@pytest.mark.parametrize(
    "script, message",
    [
        ("from pkg import lazy_name\n", "names a lazy attribute of the package root"),
        ("import pkg.missing\n", "imports pkg.missing, which is not a module"),
        ("from pkg.a import nothing\nfrom pkg.gone import x\n", "imports pkg.gone"),
    ],
)
def test_the_walk_refuses_what_it_cannot_resolve(tmp_path, script, message):
    package = _package(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "", "script.py": script})
    with pytest.raises(ImportWalkError, match=message):
        library_modules(tmp_path / "script.py", package)


#: Runs every workflow script's import statements in one interpreter and records, through ``__import__``,
#: which module imported which (cached imports included), so that each script's closure can be taken apart.
RUNTIME_PROBE = """
import ast, builtins, importlib.util, json, sys
edges = {}
real_import = builtins.__import__

def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    module = real_import(name, globals, locals, fromlist, level)
    importer = (globals or {}).get("__name__", "")
    full = importlib.util.resolve_name("." * level + name, (globals or {}).get("__package__")) if level else name
    targets = [full] + [f"{full}.{item}" for item in fromlist or () if f"{full}.{item}" in sys.modules]
    edges.setdefault(importer, set()).update(targets)
    return module

builtins.__import__ = recording_import
scripts = json.loads(sys.argv[1])
for name, path in scripts.items():
    tree = ast.parse(open(path).read())
    code = "\\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    exec(code, {"__name__": "script:" + name})
builtins.__import__ = real_import

def closure(start):
    seen, queue = set(), [start]
    while queue:
        node = queue.pop()
        for target in edges.get(node, ()):
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                module = ".".join(parts[:i])
                if module not in seen and module in sys.modules:
                    seen.add(module)
                    queue.append(module)
    return sorted(sys.modules[m].__file__ for m in seen if m.startswith("langneurons.") and sys.modules[m].__file__)

print(json.dumps({name: closure("script:" + name) for name in scripts}))
"""


@pytest.fixture(scope="module")
def runtime_modules() -> dict[str, set[str]]:
    """Per workflow script, the package modules Python loads when it runs the script's import statements."""
    scripts = json.dumps({path.stem: str(path) for path in SCRIPTS})
    done = subprocess.run([sys.executable, "-c", RUNTIME_PROBE, scripts], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return {name: {str(Path(file).resolve()) for file in files} for name, files in json.loads(done.stdout).items()}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_a_rule_lists_every_module_its_script_loads(script, runtime_modules):
    """Python's own import system is the reference: what it loads is among the rule's inputs."""
    listed = {str(path) for path in library_modules(script, LIBRARY)}
    assert runtime_modules[script.stem], "the probe saw the script's imports"
    assert runtime_modules[script.stem] <= listed


def test_the_logit_lens_rule_lists_the_selection_module():
    # it takes each language's set with selection.language_set; a hand-written list once missed it
    assert LIBRARY / "selection.py" in library_modules(REPO / "workflow_scripts" / "logit_lens.py", LIBRARY)


def test_the_scoring_rule_lists_the_native_kernel_source_and_corpus_sampling_does_not():
    # compiled at run time by langneurons.native, so no import statement names it
    kernel = LIBRARY / "native" / "prob_change.c"
    assert kernel.is_file()
    assert kernel in library_files(REPO / "workflow_scripts" / "score_shard.py", LIBRARY)
    assert kernel not in library_files(REPO / "workflow_scripts" / "sample_corpus.py", LIBRARY)


def test_corpus_sampling_does_not_depend_on_the_models():
    modules = {path.name for path in library_modules(REPO / "workflow_scripts" / "sample_corpus.py", LIBRARY)}
    assert not modules & {"scoring.py", "architectures.py", "demo_model.py", "common.py", "config.py"}


def _loaded_after(code: str) -> list[str]:
    """The model libraries loaded after running ``code`` in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint(' '.join(sorted(n for n in sys.modules if n.split('.')[0] in {HEAVY!r})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    return done.stdout.split()


def test_the_package_root_imports_nothing_until_a_name_is_used():
    probe = "import langneurons\nprint([n for n in sys.modules if n.startswith('langneurons.')])"
    done = subprocess.run([sys.executable, "-c", f"import sys\n{probe}"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert _loaded_after("import langneurons\nlangneurons.detect") != []  # the lazy names still work
    # neuron sets are read, compared and written without a model library
    assert _loaded_after("import langneurons\nlangneurons.NeuronSet\nlangneurons.SITES") == []


@pytest.mark.parametrize(
    "module",
    [
        "langneurons",
        "langneurons.plotting",
        "langneurons.config",
        "langneurons.conditions",
        "langneurons.imports",
        "langneurons.neuronset",
        "langneurons.steps.common",
        "langneurons.steps.figures",
        "langneurons.steps.logs",
        "langneurons.steps.corpus",
    ],
)
def test_planning_and_drawing_modules_load_no_model_library(module):
    assert _loaded_after(f"import {module}") == []


def test_checking_the_default_configuration_loads_no_model_library():
    code = (
        "import yaml\nfrom langneurons.config import resolve_config, load_schema\n"
        "resolve_config([yaml.safe_load(open('config.yaml'))], load_schema('schemas/config.schema.yaml'))"
    )
    assert _loaded_after(code) == []
