"""Which library modules a workflow script runs: the package modules it imports, directly or transitively.

Every rule lists the library modules its script runs as inputs, so that editing a module reruns exactly
the jobs that run it. The list is read from the code (a static walk of the import statements, at module
level and inside functions, with :mod:`ast`), never written by hand. The package's root ``__init__.py``
is left out: it only names lazy attributes (PEP 562) and imports nothing at import time; a script imports
what it uses from the defining module (``from langneurons.selection import language_set``), which the walk
follows.

Torch-free: the workflow calls it while it plans the jobs.
"""

from __future__ import annotations

import ast
from pathlib import Path


class ImportWalkError(ValueError):
    """An import the walk cannot resolve to a module file."""


def _module_file(package_dir: Path, dotted: str) -> Path | None:
    """``langneurons.steps.common`` -> ``<package_dir>/steps/common.py`` (or ``.../__init__.py`` of a package)."""
    relative = Path(*dotted.split(".")[1:])
    for candidate in (package_dir / relative.with_suffix(".py"), package_dir / relative / "__init__.py"):
        if candidate.name != ".py" and candidate.is_file():
            return candidate
    return None


def _packages_on_the_way(package_dir: Path, dotted: str) -> list[str]:
    """The packages Python initialises to import ``dotted``: ``a.b.c`` -> ``a.b`` (``a`` is the root)."""
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _dotted_name(package_dir: Path, path: Path) -> str:
    relative = path.relative_to(package_dir).with_suffix("")
    parts = [package_dir.name, *relative.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(tree: ast.AST, importer: str | None, is_package: bool, root: str) -> list[tuple[str, str]]:
    """``(module, alias)`` pairs of every import of the package in ``tree``; alias is "" for plain imports."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] == root]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if importer is None:
                    continue  # a relative import in a script is not the package's
                base = importer.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == root:
                found += [(module, alias.name) for alias in node.names]
    return found


def library_modules(script: str | Path, package_dir: str | Path) -> list[Path]:
    """The module files of the package at ``package_dir`` that ``script`` runs, sorted.

    ``script`` is a workflow script or a module of the package. Raises :class:`ImportWalkError` for an
    import of a package module that does not exist, and for a name imported from the package's root
    (import it from the module that defines it).
    """
    package_dir = Path(package_dir).resolve()
    root = package_dir.name
    found: set[Path] = set()
    queue = [Path(script).resolve()]
    while queue:
        path = queue.pop()
        inside = path.is_relative_to(package_dir)
        importer = _dotted_name(package_dir, path) if inside else None
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for module, alias in _imported_modules(tree, importer, path.name == "__init__.py", root):
            names = [*_packages_on_the_way(package_dir, module), module]
            if alias:
                submodule = f"{module}.{alias}"
                if _module_file(package_dir, submodule) is not None:
                    names.append(submodule)
                elif module == root:
                    raise ImportWalkError(
                        f"{path}: 'from {root} import {alias}' names a lazy attribute of the package root; "
                        f"import {alias} from the module that defines it, so that the workflow sees the dependency"
                    )
            for name in names:
                if name == root:
                    continue
                file = _module_file(package_dir, name)
                if file is None:
                    raise ImportWalkError(f"{path} imports {name}, which is not a module of {package_dir}")
                if file not in found:
                    found.add(file)
                    queue.append(file)
    return sorted(found)


def library_files(script: str | Path, package_dir: str | Path) -> list[Path]:
    """:func:`library_modules`, plus the C sources of the package's ``native`` kernels when ``native`` is among
    them: those are compiled at run time, not imported, and change results like a module does."""
    modules = library_modules(script, package_dir)
    native = Path(package_dir).resolve() / "native"
    if native / "__init__.py" in modules:
        modules += sorted(native.glob("*.c"))
    return modules
