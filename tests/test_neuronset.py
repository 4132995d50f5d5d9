"""NeuronSet: checks on construction, set algebra against Python sets, controls and file formats."""

import itertools
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from langneurons.neuronset import NeuronIndexError, NeuronSet, NeuronSetError, NeuronSpace

SIZES = {"ffn": 40, "attn_q": 16, "attn_k": 8, "attn_v": 8}
N_LAYERS = 3
SPACE = NeuronSpace(N_LAYERS, SIZES)


def _table(seed: int = 0, languages=("en", "fr", "zh"), kinds=("specific", "exclusive")) -> pd.DataFrame:
    gen = np.random.default_rng(seed)
    rows = []
    for lang, kind in itertools.product(languages, kinds):
        for layer, site in itertools.product(range(N_LAYERS), SIZES):
            n = int(gen.integers(0, SIZES[site] // 2 + 1))
            for index in gen.choice(SIZES[site], n, replace=False):
                rows.append((lang, kind, layer, site, int(index), float(gen.random()), float(gen.random())))
    columns = ["language", "set_kind", "layer", "site", "index", "frequency", "mean_importance"]
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"layer": "int32", "index": "int32"})


def _keys(frame: pd.DataFrame) -> set:
    return set(zip(frame["layer"].tolist(), frame["site"].tolist(), frame["index"].tolist()))


def _random_addresses(gen: np.random.Generator, n: int) -> set:
    return {
        (int(gen.integers(N_LAYERS)), site, int(gen.integers(SIZES[site])))
        for site in gen.choice(list(SIZES), n)
    }


# ---- construction --------------------------------------------------------------------------------


def test_tuples_tables_and_sets_give_the_same_set():
    tuples = [(2, "attn_k", 3), (0, "ffn", 7), (0, "ffn", 1)]
    from_tuples = NeuronSet(tuples, SPACE)
    from_table = NeuronSet(pd.DataFrame(tuples, columns=["layer", "site", "index"]), SPACE)
    assert from_tuples.addresses() == set(tuples) == from_table.addresses()
    assert from_tuples == from_table and NeuronSet(from_table) == from_table
    assert list(from_tuples) == [(0, "ffn", 1), (0, "ffn", 7), (2, "attn_k", 3)]  # layer, then site order of SITES
    assert (0, "ffn", 7) in from_tuples and (0, "ffn", 8) not in from_tuples
    whole_floats = NeuronSet(pd.DataFrame({"layer": [1.0], "site": ["ffn"], "index": [4.0]}))
    assert whole_floats.addresses() == {(1, "ffn", 4)} and whole_floats.table["layer"].dtype == np.int64
    empty = NeuronSet(pd.DataFrame(columns=["layer", "site", "index"]), SPACE)  # as steps make "no neurons"
    assert len(empty) == 0 and empty.groups() == {}


@pytest.mark.parametrize(
    "neurons, space, error, message",
    [
        (pd.DataFrame({"layer": [0], "site": ["ffn"]}), None, NeuronSetError, r"lacks column\(s\) \['index'\]"),
        ([(0, "mlp", 0)], None, NeuronIndexError, "site 'mlp' is unknown; use one of ffn"),
        ([(-1, "ffn", 0)], None, NeuronIndexError, "layer -1 is out of range: layers count from 0"),
        ([(0, "ffn", -2)], None, NeuronIndexError, "index -2 is out of range"),
        ([(0.5, "ffn", 0)], None, NeuronSetError, "column 'layer' has 0.5 in row 0; .* whole numbers"),
        ([(0, "ffn", "x")], None, NeuronSetError, "column 'index' has 'x' in row 0"),
        ([(0, "ffn", 1), (0, "ffn", 1)], None, NeuronSetError, "layer=0, site='ffn', index=1.*more than once"),
        ([(3, "ffn", 0)], SPACE, NeuronIndexError, r"layer 3 is out of range: the model has layers 0\.\.2"),
        ([(0, "ffn", 40)], SPACE, NeuronIndexError, r"index 40 of site 'ffn' is out of range: .* \(0\.\.39\)"),
        ([(0, "attn_v", 8)], SPACE, NeuronIndexError, "index 8 of site 'attn_v'"),
        ([(0, "attn_q", 0)], NeuronSpace(1, {"ffn": 4}), NeuronIndexError, "site 'attn_q' is not one of"),
        ([(0, "ffn")], None, NeuronSetError, r"\(0, 'ffn'\) is not a \(layer, site, index\) tuple"),
        ("ffn", None, NeuronSetError, "not a str"),
        (pd.DataFrame({"language": ["fr", None], "layer": 0, "site": "ffn", "index": [0, 1]}), None, NeuronSetError,
         "column 'language' is missing in row 1"),
    ],
)  # fmt: skip
def test_bad_neurons_are_refused_naming_the_value(neurons, space, error, message):
    with pytest.raises(error, match=message):
        NeuronSet(neurons, space)


def test_the_same_neuron_in_two_languages_is_two_rows_and_one_address():
    table = pd.DataFrame({"language": ["fr", "zh"], "layer": 0, "site": "ffn", "index": 5})
    both = NeuronSet(table, SPACE)
    assert len(both) == 2 and both.addresses() == {(0, "ffn", 5)}
    assert {k: v.tolist() for k, v in both.groups().items()} == {(0, "ffn"): [5]}


def test_a_set_cannot_be_changed_through_what_it_hands_out():
    neuron_set = NeuronSet(_table(), SPACE, params={"rho": 0.5}, doc_ids={"fr": [1, 2]})
    before = neuron_set.table
    handed = neuron_set.table
    handed.loc[0, "index"] = 39
    handed["extra"] = 1
    neuron_set.params["rho"] = 1.0
    neuron_set.doc_ids["fr"].append(3)
    pd.testing.assert_frame_equal(neuron_set.table, before)
    assert neuron_set.params == {"rho": 0.5} and neuron_set.doc_ids == {"fr": [1, 2]}
    with pytest.raises(AttributeError):
        neuron_set.space = None


def test_groups_hold_each_layer_and_sites_distinct_sorted_indices():
    table = _table()
    expected: dict = {}
    for layer, site, index in _keys(table):
        expected.setdefault((layer, site), set()).add(index)
    groups = NeuronSet(table, SPACE).groups()
    assert {k: v.tolist() for k, v in groups.items()} == {k: sorted(v) for k, v in expected.items()}
    assert all(v.dtype == np.int64 for v in groups.values())


def test_coerce_checks_once_and_refuses_a_set_of_another_model():
    checked = NeuronSet(_table(), SPACE)
    assert NeuronSet.coerce(checked, SPACE) is checked and NeuronSet.coerce(checked) is checked
    unchecked = NeuronSet([(2, "ffn", 39)])
    assert NeuronSet.coerce(unchecked, SPACE).space == SPACE
    with pytest.raises(NeuronIndexError, match="index 39 of site 'ffn'"):
        NeuronSet.coerce(unchecked, NeuronSpace(3, {"ffn": 20}))
    with pytest.raises(NeuronIndexError, match="belongs to a model with 3 layers of ffn 40.*this model has 4 layers"):
        NeuronSet.coerce(checked, NeuronSpace(4, SIZES))


def test_select_and_by_language_keep_exactly_their_rows_and_documents():
    table = _table()
    neuron_set = NeuronSet(table, SPACE, params={"rho": 0.5}, doc_ids={"en": ["a"], "fr": ["b", "c"], "zh": []})
    parts = neuron_set.by_language()
    assert sorted(parts) == ["en", "fr", "zh"]
    for language, part in parts.items():
        rows = table[table["language"] == language]
        assert len(part) == len(rows) and set(map(tuple, part.table[["set_kind", "layer", "site", "index"]].values)) \
            == set(map(tuple, rows[["set_kind", "layer", "site", "index"]].values))
        assert part.doc_ids == {language: neuron_set.doc_ids[language]} and part.params == {"rho": 0.5}
        assert part.space == SPACE
    fr_specific = neuron_set.select(language="fr", set_kind="specific")
    rows = table[(table["language"] == "fr") & (table["set_kind"] == "specific")]
    assert fr_specific.addresses() == _keys(rows) and fr_specific.set_kinds == ["specific"]
    assert len(neuron_set.select(language="xx")) == 0
    with pytest.raises(NeuronSetError, match="no 'language' column"):
        NeuronSet([(0, "ffn", 1)]).by_language()


# ---- set algebra -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_set_algebra_equals_python_sets_of_addresses(seed):
    gen = np.random.default_rng(seed)
    a_keys, b_keys = _random_addresses(gen, 40), _random_addresses(gen, 40)
    a = NeuronSet(pd.DataFrame(sorted(a_keys), columns=["layer", "site", "index"]).assign(language="fr"), SPACE)
    b = NeuronSet(pd.DataFrame(sorted(b_keys), columns=["layer", "site", "index"]).assign(language="zh"))
    for result, expected in ((a | b, a_keys | b_keys), (a & b, a_keys & b_keys), (a - b, a_keys - b_keys),
                             (b - a, b_keys - a_keys)):  # fmt: skip
        assert result.addresses() == expected and len(result) == len(expected)
        assert list(result.table.columns) == ["layer", "site", "index"]  # the languages differ: no label
        assert result.space == SPACE
    assert a.union(b) == a | b and a.intersection(b) == a & b and a.difference(b) == a - b
    assert a.jaccard(b) == pytest.approx(len(a_keys & b_keys) / len(a_keys | b_keys))
    assert a.jaccard(a) == 1.0 and a.jaccard(a - a) == 0.0


def test_algebra_on_sets_of_several_languages_compares_addresses_and_keeps_shared_labels():
    table = _table()
    fr, zh = (NeuronSet(table[table["language"] == lang], SPACE) for lang in ("fr", "zh"))
    everyone = NeuronSet(table, SPACE)
    assert (everyone & fr).addresses() == _keys(table[table["language"] == "fr"])
    assert (everyone - fr - zh).addresses() == _keys(table[table["language"] == "en"]) - _keys(
        table[table["language"].isin(["fr", "zh"])]
    )
    specific = NeuronSet(table[(table["language"] == "fr") & (table["set_kind"] == "specific")], SPACE)
    exclusive = NeuronSet(table[(table["language"] == "fr") & (table["set_kind"] == "exclusive")], SPACE)
    both = specific | exclusive
    assert both.languages == ["fr"] and both.set_kinds == [] and list(both.table.columns)[0] == "language"
    assert both.addresses() == _keys(table[table["language"] == "fr"])


def test_jaccard_of_two_empty_sets_is_nan_and_sets_of_two_models_are_not_compared():
    empty = NeuronSet([])
    assert math.isnan(empty.jaccard(empty)) and len(empty | empty) == 0
    with pytest.raises(NeuronIndexError, match="different models"):
        NeuronSet([(0, "ffn", 1)], SPACE) | NeuronSet([(0, "ffn", 1)], NeuronSpace(4, SIZES))


def test_algebra_keeps_metadata_only_where_the_operands_agree():
    a = NeuronSet([(0, "ffn", 1)], params={"rho": 1.0}, doc_ids={"fr": [1]})
    b = NeuronSet([(0, "ffn", 2)], params={"rho": 1.0}, doc_ids={"fr": [2]})
    assert (a | b).params == {"rho": 1.0} and (a | b).doc_ids == {}


# ---- random controls -------------------------------------------------------------------------


def test_random_control_same_layout_disjoint_and_seeded():
    table = _table()
    control = NeuronSet(table, SPACE).random_control(7).table
    group = ["language", "set_kind", "layer", "site"]
    assert control.groupby(group).size().to_dict() == table.groupby(group).size().to_dict()
    for (lang, kind), rows in table.groupby(["language", "set_kind"]):
        drawn = control[(control["language"] == lang) & (control["set_kind"] == kind)]
        assert not _keys(drawn) & _keys(rows), (lang, kind)
        assert not drawn.duplicated(["layer", "site", "index"]).any()
    assert list(control.columns) == [*table.columns, "control_seed"]
    assert (control["control_seed"] == 7).all() and control["frequency"].isna().all()
    assert control.dtypes["layer"] == table.dtypes["layer"] and control.dtypes["index"] == table.dtypes["index"]
    assert control.equals(NeuronSet(table, SPACE).random_control(7).table)
    assert _keys(control) != _keys(NeuronSet(table, SPACE).random_control(8).table)
    relabelled = NeuronSet(table, SPACE).random_control(7, set_kind="random", seed_column=None)
    assert relabelled.set_kinds == ["random"] and list(relabelled.table.columns) == list(table.columns)


def test_random_control_of_a_group_does_not_depend_on_the_rest_of_the_table():
    table = _table()
    alone = table[(table["language"] == "fr") & (table["set_kind"] == "specific")].iloc[::-1]
    whole = NeuronSet(table, SPACE).random_control(3).table
    part = whole[(whole["language"] == "fr") & (whole["set_kind"] == "specific")].reset_index(drop=True)
    pd.testing.assert_frame_equal(NeuronSet(alone, SPACE).random_control(3).table, part)


def test_random_control_is_uniform_over_the_complement():
    neuron_set = NeuronSet(pd.DataFrame({"layer": 0, "site": "attn_k", "index": [0, 1, 2]}), SPACE)
    seen = np.zeros(8)
    for seed in range(400):
        for index in neuron_set.random_control(seed).table["index"]:
            seen[index] += 1
    assert seen[:3].sum() == 0
    np.testing.assert_allclose(seen[3:] / 400, 3 / 5, atol=0.08)


def test_random_control_refuses_a_too_small_complement_and_a_set_without_space():
    full = pd.DataFrame({"language": "en", "layer": 1, "site": "attn_v", "index": range(5)})
    with pytest.raises(NeuronSetError, match="no disjoint random set of the same size exists"):
        NeuronSet(full, SPACE).random_control(0)
    with pytest.raises(NeuronSetError, match=r"needs its space: NeuronSet\(neurons, NeuronSpace.of\(model\)\)"):
        NeuronSet(full).random_control(0)
    with pytest.raises(NeuronSetError, match="seed=-1"):
        NeuronSet(full, SPACE).random_control(-1)


# ---- files ----------------------------------------------------------------------------------------


def test_parquet_round_trip_keeps_rows_dtypes_space_parameters_and_documents(tmp_path):
    neuron_set = NeuronSet(_table(), SPACE, params={"rho": 0.5, "top_k": {"ffn": 4}}, doc_ids={"fr": ["x:1", "x:2"]})
    path = neuron_set.to_parquet(tmp_path / "sets.parquet")
    assert NeuronSet.from_parquet(path) == neuron_set
    assert [p.name for p in tmp_path.iterdir()] == ["sets.parquet"]  # no temporary left behind
    plain = tmp_path / "plain.parquet"
    _table().to_parquet(plain, index=False)  # a run's neurons.parquet: no metadata
    read = NeuronSet.from_parquet(plain, SPACE)
    assert read.space == SPACE and read.params == {} and read.addresses() == _keys(_table())
    with pytest.raises(NeuronIndexError, match="sets.parquet holds neurons of a model with 3 layers"):
        NeuronSet.from_parquet(path, NeuronSpace(4, SIZES))


def test_json_round_trip_is_exact(tmp_path):
    table = NeuronSet(_table(), SPACE).random_control(1).table.assign(frequency=0.1 + 1 / 3)
    table.loc[0, "mean_importance"] = math.inf
    table.loc[1, "frequency"] = float("nan")
    neuron_set = NeuronSet(table, SPACE, params={"seed": 1}, doc_ids={"en": [0, 1]})
    neuron_set.to_json(tmp_path / "sets.json")
    back = NeuronSet.from_json(tmp_path / "sets.json")
    pd.testing.assert_frame_equal(back.table, table, check_exact=True)
    assert back == neuron_set
    empty = NeuronSet(table.iloc[:0])
    empty.to_json(tmp_path / "empty.json")
    pd.testing.assert_frame_equal(NeuronSet.from_json(tmp_path / "empty.json").table, table.iloc[:0], check_exact=True)
    with pytest.raises(NeuronSetError, match="version 99"):
        (tmp_path / "new.json").write_text('{"format": "langneurons.neurons", "version": 99}')
        NeuronSet.from_json(tmp_path / "new.json")
    with pytest.raises(NeuronSetError, match="not a langneurons neuron table"):
        (tmp_path / "other.json").write_text("[1, 2]")
        NeuronSet.from_json(tmp_path / "other.json")


def test_lape_format_round_trip_and_structure(tmp_path):
    table = _table()
    table = table[(table["site"] == "ffn") & (table["set_kind"] == "specific")]
    path = NeuronSet(table, SPACE).to_lape(tmp_path / "mask.pth", ["zh", "en", "fr"])
    raw = torch.load(path, weights_only=True)
    assert len(raw) == 3 and all(len(layers) == N_LAYERS for layers in raw)
    zh = table[table["language"] == "zh"]
    for layer in range(N_LAYERS):
        assert raw[0][layer].dtype == torch.int64
        assert raw[0][layer].tolist() == sorted(zh.loc[zh["layer"] == layer, "index"])
    back = NeuronSet.from_lape(path, ["zh", "en", "fr"], set_kind="specific", space=SPACE)
    expected = table.assign(frequency=float("nan"), mean_importance=float("nan"))
    expected = expected.sort_values(["language", "set_kind", "layer", "site", "index"], ignore_index=True)
    pd.testing.assert_frame_equal(back.table, expected)


def test_lape_export_refuses_what_its_format_cannot_hold(tmp_path):
    neuron_set = NeuronSet(_table(), SPACE)
    with pytest.raises(NeuronSetError, match=r"set kinds \['exclusive', 'specific'\]; select one"):
        neuron_set.to_lape(tmp_path / "m.pth")
    specific = neuron_set.select(set_kind="specific")
    with pytest.raises(NeuronSetError, match="attention neurons.*ffn_only=True"):
        specific.to_lape(tmp_path / "m.pth", ["en", "fr", "zh"])
    with pytest.raises(NeuronSetError, match=r"languages \['zh'\] have"):
        specific.to_lape(tmp_path / "m.pth", ["en", "fr"], ffn_only=True)
    with pytest.raises(NeuronSetError, match="needs its space"):
        NeuronSet(_table()).select(set_kind="specific").to_lape(tmp_path / "m.pth", ffn_only=True)
    assert not (tmp_path / "m.pth").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ({"en": []}, "top level is a dict"),
        ([[torch.tensor([1])]], "holds 1 languages"),
        ([[torch.tensor([1])], [torch.tensor([2]), torch.tensor([3])]], "has 2 layers, expected 1"),
        ([[torch.tensor([[1]])], [torch.tensor([2])]], "2-D tensor"),
        ([[torch.tensor([1.0])], [torch.tensor([2])]], "dtype torch.float32"),
        ([[torch.tensor([-1])], [torch.tensor([2])]], "bad.pth: neuron index -1 is out of range"),
        ([[torch.tensor([1, 1])], [torch.tensor([2])]], "repeats an index"),
        ([[torch.tensor([1])], [torch.tensor([99])]], "bad.pth: neuron index 99 of site 'ffn' is out of range"),
        ([[[1, 2]], [torch.tensor([2])]], "is a list, not a tensor"),
    ],
)
def test_lape_import_names_what_is_wrong(tmp_path, content, message):
    torch.save(content, tmp_path / "bad.pth")
    with pytest.raises(NeuronSetError, match=message):
        NeuronSet.from_lape(tmp_path / "bad.pth", ["en", "fr"], space=NeuronSpace(1, {"ffn": 40}))


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_lape_import_never_unpickles_arbitrary_objects(tmp_path, capsys):
    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump([[_Payload()]], handle, protocol=2)
    torch.save([[_Payload()]], tmp_path / "evil2.pth")
    for name in ("evil.pth", "evil2.pth"):
        with pytest.raises(NeuronSetError, match="weights_only=True"):
            NeuronSet.from_lape(tmp_path / name, ["en"])
    assert "code ran" not in capsys.readouterr().out
