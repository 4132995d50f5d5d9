"""Neuron sets: an immutable, validated table of neurons, with set algebra, controls and file formats.

A neuron is addressed as ``(layer, site, index)``, with the sites of :data:`SITES` (see
:mod:`langneurons.architectures` for what each site is in each model family). A :class:`NeuronSet`
wraps the tidy table the rest of the library uses: one row per neuron, columns ``layer, site,
index``, optionally labelled by ``language`` and ``set_kind`` and carrying per-neuron values
(``frequency``, ``mean_importance``, ...). It is checked once, when it is made:

- the columns exist, layers and indices are whole numbers, sites are known, no row repeats a
  neuron (of the same language and set kind);
- given a :class:`NeuronSpace` (the layer count and the neurons per layer of each site of a
  model, :meth:`NeuronSpace.of`), every address lies inside it.

Every module that takes neurons (deactivation, fine-tuning masks, random controls) takes a
:class:`NeuronSet` or anything :meth:`NeuronSet.coerce` turns into one, and so validates them
here and nowhere else. A set also carries the parameters that made it and, per language, the
ids of the documents it was found on (:func:`langneurons.detection.detect` fills both).

Torch-free (pandas and numpy), so that sets can be read, compared and written without loading
a model library; only LAPE's mask format, which is a ``torch.save`` file, imports torch.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from langneurons.errors import NeuronIndexError, NeuronSetError
from langneurons.io import atomic_path, read_parquet, write_parquet_atomic

__all__ = [
    "ADDRESS",
    "ATTENTION_SITES",
    "LABELS",
    "NEURON_COLUMNS",
    "SITES",
    "NeuronIndexError",
    "NeuronSet",
    "NeuronSetError",
    "NeuronSpace",
    "neuron_table",
    "stable_seed",
]

SITES: tuple[str, ...] = ("ffn", "attn_q", "attn_k", "attn_v")
ATTENTION_SITES: tuple[str, ...] = ("attn_q", "attn_k", "attn_v")
#: The columns that address a neuron.
ADDRESS: tuple[str, ...] = ("layer", "site", "index")
#: The optional columns that say which set a row belongs to.
LABELS: tuple[str, ...] = ("language", "set_kind")
#: The columns of the tables that neuron selection writes (``neurons.parquet``).
NEURON_COLUMNS: tuple[str, ...] = ("language", "set_kind", "layer", "site", "index", "frequency", "mean_importance")
#: Row order of every set: by label, then address.
_ORDER: tuple[str, ...] = (*LABELS, *ADDRESS)

JSON_FORMAT = "langneurons.neurons"
JSON_VERSION = 1
#: The Parquet key (``DataFrame.attrs``) that holds a set's space, parameters and document ids.
PARQUET_KEY = "langneurons.neuron_set"


@dataclass(frozen=True)
class NeuronSpace:
    """Where neurons can be: the layer count and the neurons per layer of each site of one model."""

    n_layers: int
    site_sizes: Mapping[str, int]

    def __post_init__(self) -> None:
        if isinstance(self.n_layers, bool) or not isinstance(self.n_layers, (int, np.integer)) or self.n_layers < 1:
            raise NeuronSetError(f"NeuronSpace.n_layers={self.n_layers!r}: give the model's layer count (>= 1)")
        sizes = {}
        for site, size in dict(self.site_sizes).items():
            if site not in SITES:
                raise NeuronIndexError(f"NeuronSpace.site_sizes names site {site!r}; sites are {', '.join(SITES)}")
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
                raise NeuronSetError(f"NeuronSpace.site_sizes[{site!r}]={size!r}: give a neuron count >= 1")
            sizes[site] = int(size)
        if not sizes:
            raise NeuronSetError("NeuronSpace.site_sizes is empty: give the neurons per layer of each site")
        object.__setattr__(self, "n_layers", int(self.n_layers))
        object.__setattr__(self, "site_sizes", MappingProxyType(sizes))

    @classmethod
    def of(cls, model: Any) -> NeuronSpace:
        """The neuron space of a model in the architecture table."""
        from langneurons.architectures import dimensions, site_sizes

        return cls(dimensions(model).n_layers, site_sizes(model))

    def to_dict(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "site_sizes": dict(self.site_sizes)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSpace):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.n_layers, tuple(sorted(self.site_sizes.items()))))

    def __str__(self) -> str:
        sizes = ", ".join(f"{site} {size}" for site, size in self.site_sizes.items())
        return f"{self.n_layers} layers of {sizes} neurons"


def _frame_of(neurons: Any) -> pd.DataFrame:
    """A copy of ``neurons`` as a DataFrame: a table, or an iterable of ``(layer, site, index)``."""
    if isinstance(neurons, pd.DataFrame):
        return neurons.copy()
    if isinstance(neurons, (str, bytes, Mapping)) or not isinstance(neurons, Iterable):
        raise NeuronSetError(
            f"neurons must be a table with columns layer, site, index or an iterable of (layer, site, index) "
            f"tuples, not a {type(neurons).__name__}"
        )
    rows = list(neurons)
    bad = next((row for row in rows if not isinstance(row, (tuple, list)) or len(row) != 3), None)
    if bad is not None:
        raise NeuronSetError(f"neuron {bad!r} is not a (layer, site, index) tuple")
    frame = pd.DataFrame(rows, columns=list(ADDRESS))
    return frame.astype({"layer": "int64", "index": "int64"}) if frame.empty else frame


def _whole_numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    """The column as integers; refuses fractions, missing values and non-numbers, naming one."""
    values = frame[column]
    if values.dtype.kind in "iu":
        return values
    if values.dtype.kind == "b":
        raise NeuronSetError(f"neuron column {column!r} holds booleans; it needs whole numbers")
    if values.empty:
        return values.astype("int64")
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() | (numbers != numbers.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise NeuronSetError(
            f"neuron column {column!r} has {values.iloc[row : row + 1].tolist()[0]!r} in row {row}; layers and "
            "indices are whole numbers"
        )
    return numbers.astype("int64")


def _check_space(frame: pd.DataFrame, space: NeuronSpace) -> None:
    """Every address of ``frame`` lies inside ``space``."""
    outside = ~frame["layer"].between(0, space.n_layers - 1)
    if outside.any():
        layer = int(frame.loc[outside, "layer"].iloc[0])
        raise NeuronIndexError(
            f"neuron layer {layer} is out of range: the model has layers 0..{space.n_layers - 1}; "
            "were the neurons found on another model?"
        )
    sizes = frame["site"].map(dict(space.site_sizes))
    if sizes.isna().any():
        site = frame.loc[sizes.isna(), "site"].iloc[0]
        raise NeuronIndexError(f"neuron site {site!r} is not one of this model's sites {sorted(space.site_sizes)}")
    outside = frame["index"] >= sizes.astype("int64")
    if outside.any():
        row = frame[outside].iloc[0]
        size = space.site_sizes[row["site"]]
        raise NeuronIndexError(
            f"neuron index {int(row['index'])} of site {row['site']!r} is out of range: layer {int(row['layer'])} "
            f"has {size} {row['site']} neurons (0..{size - 1}); were the neurons found on another model?"
        )


def _validated(neurons: Any, space: NeuronSpace | None) -> pd.DataFrame:
    """The checked table, rows in label then address order (columns and integer dtypes kept)."""
    frame = _frame_of(neurons)
    missing = [column for column in ADDRESS if column not in frame.columns]
    if missing:
        raise NeuronSetError(f"neuron table lacks column(s) {missing}; it needs columns layer, site, index")
    for column in ("layer", "index"):
        frame[column] = _whole_numbers(frame, column)
    unknown = sorted(set(frame["site"]) - set(SITES), key=str)
    if unknown:
        raise NeuronIndexError(f"neuron site {unknown[0]!r} is unknown; use one of {', '.join(SITES)}")
    for column in ("layer", "index"):
        negative = frame[column] < 0
        if negative.any():
            value = int(frame.loc[negative, column].iloc[0])
            raise NeuronIndexError(f"neuron {column} {value} is out of range: {column}s count from 0")
    for column in LABELS:
        if column in frame.columns and frame[column].isna().any():
            row = int(np.flatnonzero(frame[column].isna().to_numpy())[0])
            raise NeuronSetError(f"neuron column {column!r} is missing in row {row}; every row needs a {column}")
    if space is not None:
        _check_space(frame, space)
    key = [column for column in _ORDER if column in frame.columns]
    repeated = frame.duplicated(key)
    if repeated.any():
        row = frame.loc[repeated, key].head(1).to_dict("records")[0]
        neuron = ", ".join(f"{column}={value!r}" for column, value in row.items())
        raise NeuronSetError(
            f"neuron ({neuron}) appears more than once; a set holds each neuron once: drop the repeats "
            "(table.drop_duplicates(...))"
        )
    return frame.sort_values(key, kind="stable", ignore_index=True)


def _json_normal(value: Any, what: str) -> Any:
    """``value`` as JSON would read it back (so sets compare and save the same), or a clear error."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, default=_json_scalar))
    except (TypeError, ValueError) as error:
        raise NeuronSetError(f"{what} must be JSON data (str, numbers, lists, dicts): {error}") from error


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON data")


def stable_seed(*parts: object) -> int:
    """A platform-independent 32-bit hash of ``parts`` (``hash()`` of str is salted per process)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode("utf-8"))


def neuron_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames of :data:`NEURON_COLUMNS` as one table in set order (an empty table keeps the dtypes)."""
    if not frames:
        empty = {c: pd.Series(dtype="str") for c in ("language", "set_kind", "site")}
        empty |= {c: pd.Series(dtype="int32") for c in ("layer", "index")}
        empty |= {c: pd.Series(dtype="float64") for c in ("frequency", "mean_importance")}
        return pd.DataFrame(empty)[list(NEURON_COLUMNS)]
    table = pd.concat(frames, ignore_index=True)[list(NEURON_COLUMNS)]
    return table.sort_values(list(_ORDER), ignore_index=True)


class NeuronSet:
    """An immutable, validated set of neurons: the tidy neuron table, checked once.

    ``neurons``: a table with columns ``layer, site, index`` (optionally ``language``,
    ``set_kind`` and per-neuron values), an iterable of ``(layer, site, index)`` tuples, or
    another :class:`NeuronSet`. ``space``: the model's :class:`NeuronSpace`, against which
    every address is checked (``None``: checked when the set meets a model). ``params``: the
    parameters that made the set; ``doc_ids``: per language, the documents it was found on
    (both JSON data). Raises :class:`NeuronSetError` (:class:`NeuronIndexError` for an
    address outside the model) naming the row and the fix.

    Set algebra (``|``, ``&``, ``-``, :meth:`jaccard`) compares neurons by address; see
    :meth:`union`.
    """

    __slots__ = ("_table", "_space", "_params", "_doc_ids")

    def __init__(
        self,
        neurons: Any,
        space: NeuronSpace | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        doc_ids: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        if isinstance(neurons, NeuronSet):
            space = neurons.space if space is None else space
            params = neurons.params if params is None else params
            doc_ids = neurons.doc_ids if doc_ids is None else doc_ids
            neurons = neurons._table
        if space is not None and not isinstance(space, NeuronSpace):
            raise NeuronSetError(f"space must be a NeuronSpace (NeuronSpace.of(model)), not {type(space).__name__}")
        self._table = _validated(neurons, space)
        self._space = space
        self._params = _json_normal(dict(params or {}), "params")
        self._doc_ids = _json_normal({str(k): list(v) for k, v in (doc_ids or {}).items()}, "doc_ids")

    @classmethod
    def coerce(cls, neurons: Any, space: NeuronSpace | None = None) -> NeuronSet:
        """``neurons`` as a set checked against ``space``; a set already checked against it is returned as is."""
        if isinstance(neurons, NeuronSet):
            if space is None or neurons.space == space:
                return neurons
            if neurons.space is not None:
                raise NeuronIndexError(
                    f"the neuron set belongs to a model with {neurons.space}, but this model has {space}; "
                    "were the neurons found on another model?"
                )
        return cls(neurons, space)

    # ---- contents

    @property
    def table(self) -> pd.DataFrame:
        """The rows, as a new DataFrame (changing it leaves the set unchanged)."""
        return self._table.copy()

    @property
    def space(self) -> NeuronSpace | None:
        return self._space

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that made the set (a copy)."""
        return json.loads(json.dumps(self._params))

    @property
    def doc_ids(self) -> dict[str, list[Any]]:
        """Per language, the ids of the documents the set was found on (a copy)."""
        return json.loads(json.dumps(self._doc_ids))

    @property
    def languages(self) -> list[str]:
        return self._labels("language")

    @property
    def set_kinds(self) -> list[str]:
        return self._labels("set_kind")

    def _labels(self, column: str) -> list[str]:
        return sorted(map(str, self._table[column].unique())) if column in self._table.columns else []

    def __len__(self) -> int:
        return len(self._table)

    def addresses(self) -> frozenset[tuple[int, str, int]]:
        """The distinct ``(layer, site, index)`` of the set (several languages may share one)."""
        return frozenset(self._address_rows())

    def _address_rows(self) -> Iterator[tuple[int, str, int]]:
        layers, sites, indices = (self._table[c].tolist() for c in ADDRESS)
        return zip(layers, sites, indices)

    def __contains__(self, neuron: object) -> bool:
        return neuron in self.addresses()

    def __iter__(self) -> Iterator[tuple[int, str, int]]:
        """The distinct addresses, in layer, site, index order."""
        return iter(sorted(self.addresses(), key=lambda a: (a[0], SITES.index(a[1]), a[2])))

    def groups(self) -> dict[tuple[int, str], np.ndarray]:
        """``{(layer, site): sorted distinct int64 indices}``: what deactivation and fine-tuning act on."""
        unique = self._table[list(ADDRESS)].drop_duplicates()
        return {
            (int(layer), str(site)): np.sort(rows["index"].to_numpy(dtype=np.int64))
            for (layer, site), rows in unique.groupby(["layer", "site"], sort=True)
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        return (
            self._space == other._space
            and self._params == other._params
            and self._doc_ids == other._doc_ids
            and self._table.equals(other._table)
            and list(self._table.dtypes) == list(other._table.dtypes)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = [f"{len(self)} neurons"]
        if self.languages:
            parts.append(f"languages {', '.join(self.languages)}")
        if self.set_kinds:
            parts.append(f"set kinds {', '.join(self.set_kinds)}")
        if self._space is not None:
            parts.append(f"on a model with {self._space}")
        return f"NeuronSet({'; '.join(parts)})"

    # ---- selection

    def select(self, *, language: str | None = None, set_kind: str | None = None) -> NeuronSet:
        """The rows of one language and/or one set kind (possibly none); ``doc_ids`` keep that language's."""
        keep = pd.Series(True, index=self._table.index)
        for column, value in (("language", language), ("set_kind", set_kind)):
            if value is None:
                continue
            if column not in self._table.columns:
                raise NeuronSetError(f"this set has no {column!r} column, so it cannot be selected by {column}")
            keep &= self._table[column] == value
        doc_ids = self._doc_ids if language is None else {k: v for k, v in self._doc_ids.items() if k == language}
        return self._derived(self._table[keep], doc_ids=doc_ids)

    def by_language(self) -> dict[str, NeuronSet]:
        """One set per language, each with its own document ids."""
        if "language" not in self._table.columns:
            raise NeuronSetError("this set has no 'language' column; it holds no per-language sets")
        return {language: self.select(language=language) for language in self.languages}

    def _derived(self, table: pd.DataFrame, **changes: Any) -> NeuronSet:
        """A set of already-validated rows of this one (no second check)."""
        derived = object.__new__(NeuronSet)
        derived._table = table.reset_index(drop=True)
        derived._space = changes.get("space", self._space)
        derived._params = changes.get("params", self._params)
        derived._doc_ids = changes.get("doc_ids", self._doc_ids)
        return derived

    # ---- set algebra

    def union(self, other: Any) -> NeuronSet:
        """The neurons in either set.

        Set algebra compares addresses ``(layer, site, index)``: a neuron shared by several
        languages of one operand counts once. The result has one row per neuron, columns
        ``layer, site, index``, and a ``language`` / ``set_kind`` column only where both
        operands hold the same single value of it (per-neuron values such as ``frequency``
        belong to one operand and are dropped). The space, parameters and document ids are
        kept where the operands agree; two sets checked against different models are refused.
        """
        return self._combine(other, "union")

    def intersection(self, other: Any) -> NeuronSet:
        """The neurons in both sets (see :meth:`union` for what the result holds)."""
        return self._combine(other, "intersection")

    def difference(self, other: Any) -> NeuronSet:
        """The neurons of this set that are not in ``other`` (see :meth:`union` for what the result holds)."""
        return self._combine(other, "difference")

    __or__ = union
    __and__ = intersection
    __sub__ = difference

    def jaccard(self, other: Any) -> float:
        """|A ∩ B| / |A ∪ B| of the addresses; NaN for two empty sets."""
        other = self._operand(other)
        mine, theirs = self.addresses(), other.addresses()
        union = len(mine | theirs)
        return len(mine & theirs) / union if union else float("nan")

    def _operand(self, other: Any) -> NeuronSet:
        other = NeuronSet.coerce(other)
        if self._space is not None and other._space is not None and self._space != other._space:
            raise NeuronIndexError(
                f"the sets belong to different models ({self._space} and {other._space}); compare sets of one model"
            )
        return other

    def _combine(self, other: Any, operation: str) -> NeuronSet:
        other = self._operand(other)
        mine, theirs = (s._table[list(ADDRESS)].drop_duplicates() for s in (self, other))
        if operation == "union":
            rows = pd.concat([mine, theirs.astype(mine.dtypes.to_dict())], ignore_index=True).drop_duplicates()
        else:
            marked = mine.merge(theirs, on=list(ADDRESS), how="left", indicator=True)
            rows = marked[marked["_merge"] == ("both" if operation == "intersection" else "left_only")]
            rows = rows[list(ADDRESS)]
        labels = {}
        for column in LABELS:
            values = {tuple(s._table[column].unique()) if column in s._table.columns else () for s in (self, other)}
            if len(values) == 1 and len(next(iter(values))) == 1:
                labels[column] = next(iter(values))[0]
        table = rows.assign(**labels)[[*labels, *ADDRESS]].sort_values([*labels, *ADDRESS], ignore_index=True)
        agreed = {
            name: getattr(self, name) if getattr(self, name) == getattr(other, name) else {}
            for name in ("_params", "_doc_ids")
        }
        return self._derived(
            table, space=self._space or other._space, params=agreed["_params"], doc_ids=agreed["_doc_ids"]
        )

    # ---- random control

    def random_control(
        self, seed: int, *, set_kind: str | None = None, seed_column: str | None = "control_seed"
    ) -> NeuronSet:
        """A random set with the same count per (layer, site) as this one, disjoint from it.

        Why: an effect of ablating (or training) a language's neurons only says something if
        a set of the same size and layout, drawn from the *other* neurons, does not show it.
        For every (language, set_kind) group (one group if those columns are absent) and every
        (layer, site), as many distinct indices as the set holds there are drawn uniformly
        without replacement from the indices *not* in that group's set, by a ``numpy``
        Generator seeded with ``(seed, hash(language, set_kind, layer, site))``. So a control
        depends only on its own group and ``seed``, never on which other groups the set holds.

        The result keeps the columns in order; ``language`` and ``set_kind`` are kept
        (``set_kind`` is replaced when given), every other value column is NaN, and
        ``seed_column`` (``None`` for none) holds ``seed``. Needs the set's :attr:`space`.
        Raises :class:`NeuronSetError` when a (layer, site) holds more than half of its
        neurons, so that no disjoint set of the same size exists.
        """
        if self._space is None:
            raise NeuronSetError(
                "a random control is drawn from the model's other neurons, so the set needs its space: "
                "NeuronSet(neurons, NeuronSpace.of(model))"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise NeuronSetError(f"seed={seed!r}: give a non-negative integer")
        seed = int(seed)
        table = self._table
        group_columns = [c for c in LABELS if c in table.columns]
        parts = []
        groups = table.groupby(group_columns, sort=True) if group_columns else [((), table)]
        for key, group in groups:
            key = key if isinstance(key, tuple) else (key,)
            labels = dict(zip(group_columns, key))
            for (layer, site), rows in group.groupby(["layer", "site"], sort=True):
                size = self._space.site_sizes[site]
                taken = rows["index"].to_numpy(dtype=np.int64)
                free = np.ones(size, dtype=bool)
                free[taken] = False
                pool = np.flatnonzero(free)
                if pool.size < taken.size:
                    raise NeuronSetError(
                        f"{labels or 'the set'} holds {taken.size} of the {size} {site!r} neurons of layer {layer}, "
                        f"so no disjoint random set of the same size exists (it needs at most {size // 2}); "
                        "use a smaller set"
                    )
                rng = np.random.default_rng([seed, stable_seed(*key, int(layer), site)])
                drawn = np.sort(pool[rng.permutation(pool.size)[: taken.size]])
                parts.append(pd.DataFrame({**labels, "layer": int(layer), "site": site, "index": drawn}))
        if parts:
            control = pd.concat(parts, ignore_index=True)
        else:
            control = pd.DataFrame({c: table[c].iloc[:0] for c in (*group_columns, *ADDRESS)})
        columns = list(table.columns)
        if seed_column is not None and seed_column not in columns:
            columns.append(seed_column)
        for column in columns:
            if column not in (*ADDRESS, *group_columns):
                control[column] = seed if column == seed_column else float("nan")
        if set_kind is not None:
            control["set_kind"] = set_kind
        control = control[columns].astype({"layer": table["layer"].dtype, "index": table["index"].dtype})
        if seed_column is not None:
            control = control.astype({seed_column: "int64"})
        order = [c for c in _ORDER if c in columns]
        params = {**self._params, "control_seed": seed}
        return self._derived(control.sort_values(order, ignore_index=True), params=params)

    # ---- files

    def _metadata(self) -> dict[str, Any]:
        return {
            "space": None if self._space is None else self._space.to_dict(),
            "params": self._params,
            "doc_ids": self._doc_ids,
        }

    @classmethod
    def _from_metadata(cls, table: pd.DataFrame, metadata: Mapping[str, Any], space: NeuronSpace | None, where: str):
        stored = metadata.get("space")
        stored = None if stored is None else NeuronSpace(stored["n_layers"], stored["site_sizes"])
        if space is not None and stored is not None and stored != space:
            raise NeuronIndexError(
                f"{where} holds neurons of a model with {stored}, but this model has {space}; "
                "were the neurons found on another model?"
            )
        try:
            return cls(table, space or stored, params=metadata.get("params"), doc_ids=metadata.get("doc_ids"))
        except NeuronSetError as error:
            raise type(error)(f"{where}: {error}") from error

    def to_parquet(self, path: str | os.PathLike) -> Path:
        """Write the table as Parquet, atomically, with the space, parameters and document ids in its metadata."""
        table = self.table
        table.attrs = {PARQUET_KEY: json.dumps(self._metadata(), sort_keys=True)}
        return write_parquet_atomic(table, path)

    @classmethod
    def from_parquet(cls, path: str | os.PathLike, space: NeuronSpace | None = None) -> NeuronSet:
        """Read a set written by :meth:`to_parquet`, or any neuron table (such as a run's ``neurons.parquet``)."""
        table = read_parquet(path)
        metadata = json.loads(table.attrs.get(PARQUET_KEY, "{}"))
        table.attrs = {}
        return cls._from_metadata(table, metadata, space, str(path))

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the set as versioned JSON, atomically; :meth:`from_json` reads it back exactly.

        Structure (version 1)::

            {"format": "langneurons.neurons", "version": 1,
             "columns": [{"name": "language", "dtype": "str"}, {"name": "layer", "dtype": "int32"}, ...],
             "neurons": [{"language": "fr", "set_kind": "specific", "layer": 3, "site": "ffn",
                          "index": 117, "frequency": 1.0, "mean_importance": 0.42, ...}, ...],
             "space": {"n_layers": 32, "site_sizes": {"ffn": 14336, ...}} or null,
             "params": {...}, "doc_ids": {"fr": [...], ...}}

        ``columns`` keeps the column order and pandas dtypes; each neuron is one object with
        every column. Float NaN is written as ``null`` and infinities as the strings
        ``"Infinity"``/``"-Infinity"`` (strict JSON has neither), so that any JSON reader can
        parse the file. Columns must be str, int, float or bool.
        """
        table = self._table
        kinds = {c: table[c].dtype.kind for c in table.columns}
        columns = [{"name": str(c), "dtype": str(table[c].dtype)} for c in table.columns]
        records = [
            {c: _json_cell(v, kinds[c]) for c, v in zip(table.columns, row)}
            for row in table.itertuples(index=False, name=None)
        ]
        document = {"format": JSON_FORMAT, "version": JSON_VERSION, "columns": columns, "neurons": records}
        document |= self._metadata()
        text = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        with atomic_path(path) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def from_json(cls, path: str | os.PathLike, space: NeuronSpace | None = None) -> NeuronSet:
        """Read a set written by :meth:`to_json`, with its column order, dtypes and metadata."""
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise NeuronSetError(f"{path} is not valid JSON ({error}); was it written by NeuronSet.to_json?") from error
        if not isinstance(document, dict) or document.get("format") != JSON_FORMAT:
            raise NeuronSetError(f'{path} is not a langneurons neuron table (no "format": "{JSON_FORMAT}")')
        version = document.get("version")
        if version != JSON_VERSION:
            raise NeuronSetError(
                f"{path} has version {version!r}; this langneurons reads version {JSON_VERSION}: upgrade it"
            )
        try:
            names = [c["name"] for c in document["columns"]]
            dtypes = [c["dtype"] for c in document["columns"]]
            records = document["neurons"]
        except (KeyError, TypeError) as error:
            raise NeuronSetError(f"{path}: malformed 'columns' or 'neurons' ({error!r})") from error
        for number, record in enumerate(records):
            if not isinstance(record, dict) or set(record) != set(names):
                raise NeuronSetError(f"{path}: neuron {number} does not have exactly the columns {names}")
        data = {}
        for name, dtype in zip(names, dtypes):
            values = [r[name] for r in records]
            try:
                textual = dtype in ("str", "string", "object")
                if not textual and np.dtype(dtype).kind == "f":
                    values = [float("nan") if v is None else float(v) for v in values]
                data[name] = pd.Series(values, dtype=object).astype(dtype)
            except (TypeError, ValueError) as error:
                raise NeuronSetError(f"{path}: column {name!r} cannot be read as {dtype} ({error})") from error
        return cls._from_metadata(pd.DataFrame(data, columns=names), document, space, str(path))

    def to_lape(
        self, path: str | os.PathLike, languages: Sequence[str] | None = None, *, ffn_only: bool = False
    ) -> Path:
        """Write the set in LAPE's mask format, atomically.

        The format of RUCAIBox/Language-Specific-Neurons (``identify.py`` writes it,
        ``activation_mask`` readers use it): ``torch.save`` of a ``List[List[LongTensor]]``,
        languages (in the order of ``languages``, default: sorted) x layers (the space's
        ``n_layers``) x the sorted FFN unit indices of that language in that layer. A language
        without neurons gets empty tensors. The set must hold one set kind (:meth:`select`) and
        have a space. The format holds FFN units only: attention neurons are refused unless
        ``ffn_only=True`` drops them.
        """
        import torch

        if self._space is None:
            raise NeuronSetError("LAPE's format stores every layer, so the set needs its space: NeuronSpace.of(model)")
        if len(self.set_kinds) > 1:
            raise NeuronSetError(f"the set holds set kinds {self.set_kinds}; select one: set.select(set_kind=...)")
        table = self._table
        if "language" not in table.columns:
            raise NeuronSetError("LAPE's format is per language; the set has no 'language' column")
        languages = list(self.languages if languages is None else languages)
        others = table[table["site"] != "ffn"]
        if len(others) and not ffn_only:
            raise NeuronSetError(
                f"{len(others)} neurons are attention neurons, which LAPE's format cannot hold; "
                "pass ffn_only=True to export only the FFN units"
            )
        if len(set(languages)) != len(languages):
            raise NeuronSetError(f"languages={languages} repeats a language")
        rows = table[table["site"] == "ffn"]
        unknown = sorted(set(rows["language"]) - set(languages))
        if unknown:
            raise NeuronSetError(
                f"languages {unknown} have neurons but are not in languages={languages}; "
                "add them (the order is the file's language order) or select the languages first"
            )
        masks = []
        for language in languages:
            own = rows[rows["language"] == language]
            by_layer = {int(layer): g["index"].to_numpy(dtype=np.int64) for layer, g in own.groupby("layer")}
            empty = np.zeros(0, dtype=np.int64)
            masks.append([torch.from_numpy(by_layer.get(layer, empty)) for layer in range(self._space.n_layers)])
        with atomic_path(path) as tmp:
            torch.save(masks, tmp)
        return Path(path)

    @classmethod
    def from_lape(
        cls,
        path: str | os.PathLike,
        languages: Sequence[str],
        *,
        set_kind: str = "lape_import",
        space: NeuronSpace | None = None,
    ) -> NeuronSet:
        """Read a LAPE mask file (``List[List[LongTensor]]``) as a set of :data:`NEURON_COLUMNS`.

        The file is loaded only with ``torch.load(..., weights_only=True)`` (never plain
        pickle), then checked: a list with one entry per name in ``languages`` (the file
        stores no names; give them in the file's order), each a list of one 1-D integer tensor
        of distinct indices per layer (as many as ``space.n_layers`` when a space is given,
        which also bounds the indices). ``site`` is ``ffn``; frequency and mean_importance are NaN.
        """
        import torch

        try:
            masks = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
            raise NeuronSetError(
                f"{path} could not be loaded with torch.load(weights_only=True) ({str(error).splitlines()[0]}); "
                "a LAPE mask file holds only nested lists of integer tensors: re-save it as "
                "torch.save([[LongTensor per layer] per language], path)"
            ) from error

        def fail(what: str) -> NeuronSetError:
            return NeuronSetError(
                f"{path}: {what}. LAPE's format is a list (one entry per language) of lists (one per layer) of "
                "1-D integer tensors of FFN unit indices; fix the file or the languages/space you passed"
            )

        if not isinstance(masks, (list, tuple)):
            raise fail(f"the top level is a {type(masks).__name__}, not a list of languages")
        if len(masks) != len(languages):
            raise fail(f"it holds {len(masks)} languages but languages={list(languages)} names {len(languages)}")
        if len(set(languages)) != len(languages):
            raise fail(f"languages={list(languages)} repeats a language")
        n_layers = None if space is None else space.n_layers
        frames = []
        for language, per_layer in zip(languages, masks):
            if not isinstance(per_layer, (list, tuple)):
                raise fail(f"language {language!r} is a {type(per_layer).__name__}, not a list of layers")
            n_layers = len(per_layer) if n_layers is None else n_layers
            if len(per_layer) != n_layers:
                raise fail(f"language {language!r} has {len(per_layer)} layers, expected {n_layers}")
            for layer, indices in enumerate(per_layer):
                where = f"language {language!r} layer {layer}"
                if not isinstance(indices, torch.Tensor):
                    raise fail(f"{where} is a {type(indices).__name__}, not a tensor")
                if indices.dim() != 1:
                    raise fail(f"{where} is a {indices.dim()}-D tensor, not 1-D")
                if indices.numel() == 0:
                    continue
                if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
                    raise fail(f"{where} has dtype {indices.dtype}, not an integer type")
                values = indices.long()
                if values.unique().numel() != values.numel():
                    raise fail(f"{where} repeats an index")
                frames.append(
                    pd.DataFrame(
                        {
                            "language": language,
                            "set_kind": set_kind,
                            "layer": np.int32(layer),
                            "site": "ffn",
                            "index": values.sort().values.numpy().astype("int32"),
                            "frequency": float("nan"),
                            "mean_importance": float("nan"),
                        }
                    )
                )
        metadata = {"params": {"source": "lape", "path": str(path)}}
        return cls._from_metadata(neuron_table(frames), metadata, space, str(path))


def _json_cell(value: object, kind: str) -> object:
    if kind == "f":
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if kind in "iu":
        return int(value)
    if kind == "b":
        return bool(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        raise NeuronSetError(
            f"cannot write a cell of type {type(value).__name__} as JSON; neuron tables hold str/int/float/bool"
        )
    return value
