"""Tests of pixelseg.data.split: seeded, stratified, disjoint train/val/test splits."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from pixelseg.data.split import (
    SPLITS,
    foreground_strata,
    load_split,
    make_sequence_split,
    make_split,
    save_split,
    sequences,
)


def _stems(n: int) -> list[str]:
    return [f"s{i:03d}" for i in range(n)]


def _assert_partition(split: dict[str, list[str]], stems: list[str]) -> None:
    assert set(split) == set(SPLITS)
    parts = [set(split[k]) for k in SPLITS]
    assert sum(len(split[k]) for k in SPLITS) == len(stems)  # no duplicates inside a part
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2])
    assert parts[1].isdisjoint(parts[2])
    assert parts[0] | parts[1] | parts[2] == set(stems)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 20, 100])
def test_split_is_a_partition(n):
    stems = _stems(n)
    split = make_split(stems, 0.15, 0.15, seed=3)
    _assert_partition(split, stems)
    for k in SPLITS:
        assert split[k] == sorted(split[k])


@pytest.mark.parametrize("n", [3, 4, 5, 10])
def test_val_and_test_non_empty_from_three_samples(n):
    for seed in range(5):
        split = make_split(_stems(n), 0.15, 0.15, seed=seed)
        assert len(split["val"]) >= 1 and len(split["test"]) >= 1
        assert len(split["train"]) >= 1


def test_sizes_follow_fractions():
    split = make_split(_stems(100), 0.15, 0.2, seed=0)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (65, 15, 20)


def test_zero_fraction_gives_empty_part():
    split = make_split(_stems(10), 0.2, 0.0, seed=0)
    assert split["test"] == [] and len(split["val"]) == 2 and len(split["train"]) == 8


def test_same_seed_same_split_and_different_seed_differs():
    stems = _stems(50)
    a = make_split(stems, seed=7)
    assert make_split(stems, seed=7) == a
    others = [make_split(stems, seed=s) for s in range(8, 12)]
    assert any(o != a for o in others)


def test_split_independent_of_input_order():
    stems = _stems(40)
    strata = [str(i % 3) for i in range(40)]
    a = make_split(stems, seed=1, strata=strata)
    order = list(range(40))
    random.Random(0).shuffle(order)
    b = make_split([stems[i] for i in order], seed=1, strata=[strata[i] for i in order])
    assert a == b


def test_stratified_proportions_ph2_like():
    # PH2's 40/40/20 diagnoses: each diagnosis is split in the same proportions
    stems = _stems(100)
    strata = ["0"] * 40 + ["1"] * 40 + ["2"] * 20
    label = dict(zip(stems, strata, strict=True))
    for seed in range(3):
        split = make_split(stems, 0.15, 0.15, seed=seed, strata=strata)
        _assert_partition(split, stems)
        assert Counter(label[s] for s in split["val"]) == {"0": 6, "1": 6, "2": 3}
        assert Counter(label[s] for s in split["test"]) == {"0": 6, "1": 6, "2": 3}
        assert Counter(label[s] for s in split["train"]) == {"0": 28, "1": 28, "2": 14}


def test_stratified_small_stratum_still_in_test():
    # a rare class (5 of 50) gets its share of the test set
    stems = _stems(50)
    strata = ["rare"] * 5 + ["common"] * 45
    label = dict(zip(stems, strata, strict=True))
    split = make_split(stems, 0.2, 0.2, seed=0, strata=strata)
    assert Counter(label[s] for s in split["test"]) == {"rare": 1, "common": 9}
    assert Counter(label[s] for s in split["val"]) == {"rare": 1, "common": 9}


def test_stratified_totals_match_unstratified():
    stems = _stems(23)
    strata = [str(i % 4) for i in range(23)]
    plain = make_split(stems, 0.15, 0.15, seed=0)
    strat = make_split(stems, 0.15, 0.15, seed=0, strata=strata)
    _assert_partition(strat, stems)
    assert {k: len(v) for k, v in strat.items()} == {k: len(v) for k, v in plain.items()}


@pytest.mark.parametrize("val, test", [(-0.1, 0.1), (0.1, 1.0), (0.5, 0.5), (0.7, 0.4)])
def test_bad_fractions(val, test):
    with pytest.raises(ValueError):
        make_split(_stems(10), val, test)


def test_bad_strata_length_and_duplicates():
    with pytest.raises(ValueError, match="strata"):
        make_split(_stems(5), strata=["a"] * 4)
    with pytest.raises(ValueError, match="unique"):
        make_split(["a", "b", "a"])


def test_foreground_strata_terciles():
    fractions = [0.5, 0.01, 0.9, 0.3, 0.05, 0.7, 0.2, 0.02, 0.8]
    labels = foreground_strata(fractions)
    assert len(labels) == len(fractions)
    assert Counter(labels) == {"0": 3, "1": 3, "2": 3}
    pairs = list(zip(fractions, labels, strict=True))
    by_label = {lab: [f for f, x in pairs if x == lab] for lab in "012"}
    assert max(by_label["0"]) < min(by_label["1"])
    assert max(by_label["1"]) < min(by_label["2"])


def test_foreground_strata_edge_cases():
    assert foreground_strata([]) == []
    assert len(set(foreground_strata([0.3] * 6))) == 1
    assert Counter(foreground_strata([0.1, 0.2, 0.3, 0.4], bins=2)) == {"0": 2, "1": 2}


def test_foreground_strata_feed_make_split():
    fractions = [i / 30 for i in range(30)]
    strata = foreground_strata(fractions)
    stems = _stems(30)
    split = make_split(stems, 0.2, 0.2, seed=0, strata=strata)
    label = dict(zip(stems, strata, strict=True))
    assert Counter(label[s] for s in split["test"]) == {"0": 2, "1": 2, "2": 2}


def test_save_load_roundtrip(tmp_path):
    split = make_split(_stems(12), seed=4)
    path = tmp_path / "split.json"
    save_split(path, split)
    assert json.loads(path.read_text()) == split
    assert load_split(path) == split
    assert load_split(str(path)) == split


def test_load_split_missing_key(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["a"], "val": []}))
    with pytest.raises(ValueError, match="test"):
        load_split(path)


def _frames(counts: dict[str, int], pattern: str = "{seq}_{i:05d}") -> list[str]:
    return [pattern.format(seq=seq, i=i) for seq, n in counts.items() for i in range(n)]


def test_sequences_are_read_from_file_names_only_when_there_are_several():
    stems = _frames({"0016E5": 3, "0001TP": 2}) + ["0006R0_f00960", "0006R0_f01050"]
    assert sequences(stems) == ["0016E5"] * 3 + ["0001TP"] * 2 + ["0006R0"] * 2
    assert sequences(["10", "11", "12"]) is None  # plain numbers: no sequence
    assert sequences(["IMD002", "IMD003", "IMD004"]) is None  # no separator
    assert sequences(_frames({"img": 9})) is None  # one name for everything
    assert sequences(_frames({"a1": 4, "b2": 4, "c3": 1})) is None  # a lone frame
    slices = _frames({f"patient{k}": 3 for k in range(3)}, "{seq}-slice{i:03d}")
    assert sequences(slices) == ["patient0"] * 3 + ["patient1"] * 3 + ["patient2"] * 3
    # classes numbered 1, 2, ... 100 (Oxford-IIIT Pets) are no sequences
    pets = [f"{breed}_{i}" for breed in ("Abyssinian", "Bengal", "pug") for i in (1, 10, 100)]
    assert sequences(pets) is None


@pytest.mark.parametrize("seed", range(5))
def test_a_sequence_split_keeps_every_sequence_on_one_side(seed):
    counts = {"0016E5": 95, "0001TP": 22, "0006R0": 33}
    stems = _frames(counts)
    split = make_sequence_split(stems, sequences(stems), 0.15, 0.15, seed)
    _assert_partition(split, stems)
    sides = {part: {s.split("_")[0] for s in split[part]} for part in SPLITS}
    assert sides["train"] == {"0016E5"}  # too big to hold out: it would overfill val or test
    assert sides["val"] | sides["test"] == {"0001TP", "0006R0"}
    assert sides["val"].isdisjoint(sides["test"])


def test_a_sequence_split_that_would_starve_training_is_refused():
    stems = _frames({"a1": 10, "b1": 10, "c1": 10})
    assert make_sequence_split(stems, sequences(stems), 0.4, 0.4, 0) is None


def test_training_splits_by_sequence_when_names_show_them(tmp_path, logs):
    from pixelseg.config import TrainConfig
    from pixelseg.data.layouts import Sample
    from pixelseg.engine.resolve import prepare_split

    stems = _frames({f"seq{k}": 6 for k in range(8)})
    samples = [Sample(s, tmp_path / f"{s}.png", tmp_path / f"{s}.png") for s in stems]
    cfg = TrainConfig(data=str(tmp_path), model="unet")
    split = prepare_split(cfg, samples, [0.5] * len(stems), tmp_path, False, True)
    _assert_partition(split, stems)
    sides = {part: {s.split("_")[0] for s in split[part]} for part in SPLITS}
    assert all(sides[a].isdisjoint(sides[b]) for a, b in [("train", "val"), ("train", "test")])
    assert len(sides["val"]) >= 1 and len(sides["test"]) >= 1
    assert logs[-1].startswith("split by sequence (8 in the file names)")
    assert json.loads((tmp_path / "split.json").read_text()) == split
