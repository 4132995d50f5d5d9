"""Workflow steps that make the analysed model's files: a configured GGUF converted once, a local model's
fingerprint."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from langneurons.errors import ConfigError
from langneurons.io import write_json_atomic
from langneurons.models import convert_gguf, gguf_source, model_fingerprint, package_version, resolve_gguf


def model_fingerprint_step(path: str | os.PathLike, expected_sha256: str, out_path: str) -> dict[str, Any]:
    """Write the content fingerprint of the local model at ``path``, which planning found to be ``expected_sha256``.

    The files are hashed again here: a model replaced between planning and this job would
    otherwise be recorded under the old fingerprint, and its results kept as the old model's.
    """
    record = model_fingerprint(path)
    if record["sha256"] != expected_sha256:
        raise ConfigError(
            f"the model at {str(path)!r} changed after the workflow was planned (fingerprint {expected_sha256[:12]} "
            f"then, {record['sha256'][:12]} now): run Snakemake again once the model's files are complete"
        )
    write_json_atomic({"path": str(path), **record}, out_path)
    return record


def prepare_model_step(model_params: Mapping[str, Any], out_dir: str) -> dict[str, Any]:
    """Convert the configured GGUF (``model.gguf_file`` or ``model.gguf_package``) into the plain model folder
    ``out_dir`` that every model job loads; returns the conversion record (with the GGUF's SHA-256)."""
    source = gguf_source(model_params)
    if source is None:
        raise ConfigError("prepare_model needs model.gguf_file or model.gguf_package; neither is set")
    origin = dict(model_params)
    if source.kind == "package":
        origin["gguf_package_version"] = package_version(source.where)
    return convert_gguf(resolve_gguf(source, model_params.get("revision")), out_dir, source=origin)
