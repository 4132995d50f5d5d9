"""The cached PLND scores: one safetensors file per shard of a language's detection documents.

A file holds one ``[docs, layers, neurons]`` tensor per site, LAPE's per-document counts when they were
taken (``ffn_active``, ``n_tokens``), and in its header the documents' ids and a provenance record.

Scores are computed in float32 and stored in a *storage dtype*: float32, or float16 / bfloat16 at half
the size (for Mistral-7B, 2.6 MB per document in float32 over its 32 x 20,480 scored neurons; see the
README). Top-k selection reads the stored values, so the dtype is a result-affecting setting: rounding
is monotonic, so it never reorders two scores, but it merges scores closer than the dtype's resolution
(float16 keeps 11 significant bits, bfloat16 8) into ties, and a tie at a document's top-k boundary can
move a neuron in or out. A site whose scores exceed float16's range (65504) is kept in float32 rather
than stored as infinity. LAPE's counts are stored exactly.

:class:`ScoreShards` reads one language's shards one site at a time, so that a step never holds more
than one site of one language.
"""

from __future__ import annotations

import ctypes
import json
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import torch
from safetensors.torch import save_file

from langneurons.errors import ConfigError
from langneurons.io import atomic_path, open_safetensors

#: ``scoring.storage_dtype`` names, the torch dtypes of the same name.
STORAGE_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
#: The largest finite float16.
FLOAT16_MAX = float(torch.finfo(torch.float16).max)
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def _exact_counts(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Integer-valued counts in the narrowest integer dtype that holds them exactly."""
    if tensor.dtype.is_floating_point and not torch.equal(tensor, tensor.round()):
        raise ValueError(f"{name} holds non-integer values; it is not a count")
    largest = int(tensor.max()) if tensor.numel() else 0
    for dtype in (torch.int16, torch.int32, torch.int64):
        if largest <= torch.iinfo(dtype).max:
            return tensor.to(dtype)
    raise ValueError(f"{name} holds counts up to {largest}, beyond int64")


def storage_tensors(
    scores: Mapping[str, torch.Tensor], storage_dtype: str, counts: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """The tensors a score file stores: scores in ``storage_dtype``, the ``counts`` exactly.

    In float32 everything is stored as computed. In float16, a site with a score above the dtype's
    largest value (65504) stays in float32 (with a warning in the job's log): rounding it would give
    infinity.
    """
    if storage_dtype not in STORAGE_DTYPES:
        raise ConfigError(f"scoring.storage_dtype is {storage_dtype!r}; use one of {', '.join(STORAGE_DTYPES)}")
    dtype = getattr(torch, storage_dtype)
    stored = {}
    for name, tensor in scores.items():
        if storage_dtype == "float32" or not tensor.dtype.is_floating_point:
            stored[name] = tensor.contiguous()
        elif name in counts:
            stored[name] = _exact_counts(tensor, name).contiguous()
        elif storage_dtype == "float16" and tensor.numel() and float(tensor.abs().max()) > FLOAT16_MAX:
            warnings.warn(
                f"{name} scores reach {float(tensor.abs().max()):.6g}, above float16's largest value "
                f"{FLOAT16_MAX:.0f}: {name} is stored in float32",
                stacklevel=2,
            )
            stored[name] = tensor.to(torch.float32).contiguous()
        else:
            stored[name] = tensor.to(dtype).contiguous()
    return stored


def write_shard(
    path: str,
    scores: Mapping[str, torch.Tensor],
    doc_ids: Sequence[str],
    record: Mapping[str, Any],
    storage_dtype: str = "float32",
    counts: Collection[str] = (),
) -> None:
    """Write one shard's scores (see :func:`storage_tensors`), its doc ids and provenance, atomically."""
    tensors = storage_tensors(scores, storage_dtype, counts)
    metadata = {"doc_ids": json.dumps(list(doc_ids)), "provenance": json.dumps(dict(record), default=str)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


#: glibc's M_MMAP_THRESHOLD, and the threshold set: blocks of 64 KiB and more get their own mapping.
_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES = -3, 64 * 1024


def release_large_blocks() -> bool:
    """Make this process return every freed block of 64 KiB or more to the system (glibc only).

    glibc raises its mmap threshold each time a large block is freed, up to 32 MiB, so that later
    tensors below it come from the heap, and the heap, fragmented by the small tensors kept between
    them, stays resident: reading one language after another, the peak would grow with the number of
    languages. A fixed threshold keeps each tensor in its own mapping, unmapped when freed (measured:
    bench/stability_memory.py). Returns whether it could be set.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


class ScoreShards(Mapping[str, torch.Tensor]):
    """One language's score shards, in order, as ``{site: [docs, layers, neurons]}`` read on access.

    ``shards[site]`` reads that site from every shard into one tensor (no concatenation copy; one
    shard is returned as read), in the widest dtype any shard stores it in, and keeps nothing: a step
    that drops a site before asking for the next holds one site at a time. Names, dtypes and document
    counts come from the headers alone.
    """

    def __init__(self, paths: Sequence[str]):
        if not paths:
            raise ValueError("no score shards given")
        self.paths = [str(path) for path in paths]
        self.doc_ids: list[str] = []
        self._docs_per_shard: list[int] = []
        self._dtypes: dict[str, torch.dtype] = {}
        for path in self.paths:
            with open_safetensors(path) as handle:
                ids = json.loads((handle.metadata() or {})["doc_ids"])
                dtypes = {name: _SAFETENSORS_DTYPES[handle.get_slice(name).get_dtype()] for name in handle.keys()}
            if self._dtypes and set(dtypes) != set(self._dtypes):
                raise ValueError(f"{path} holds {sorted(dtypes)}, but {self.paths[0]} holds {sorted(self._dtypes)}")
            for name, dtype in dtypes.items():
                self._dtypes[name] = torch.promote_types(self._dtypes.get(name, dtype), dtype)
            self.doc_ids += ids
            self._docs_per_shard.append(len(ids))
        self._names = list(self._dtypes)

    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        if len(self.paths) == 1:
            with open_safetensors(self.paths[0]) as handle:
                return handle.get_tensor(name)
        out = None
        start = 0
        for path, n in zip(self.paths, self._docs_per_shard):
            with open_safetensors(path) as handle:
                part = handle.get_tensor(name)
            if out is None:
                out = torch.empty((self.n_docs, *part.shape[1:]), dtype=self._dtypes[name])
            out[start : start + n] = part
            start += n
            del part
        return out

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
