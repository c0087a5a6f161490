from collections import Counter

import pytest

from sparkdl.data.images import LabelMapping, assign_split, relative_path
from sparkdl.errors import DataError


def test_split_is_a_pure_function_of_path_and_seed():
    fr = (0.7, 0.15, 0.15)
    assert assign_split("001.ak47/001_0001.jpg", 42, fr) == assign_split("001.ak47/001_0001.jpg", 42, fr)
    paths = [f"c{i % 7}/img_{i}.jpg" for i in range(6000)]
    a = [assign_split(p, 42, fr) for p in paths]
    b = [assign_split(p, 43, fr) for p in paths]
    assert a != b  # the seed matters
    counts = Counter(a)
    assert set(counts) == {"train", "valid", "test"}
    # 6000 draws: each fraction within 3 percentage points
    assert abs(counts["train"] / 6000 - 0.7) < 0.03
    assert abs(counts["valid"] / 6000 - 0.15) < 0.03
    assert abs(counts["test"] / 6000 - 0.15) < 0.03


def test_zero_fractions_are_never_assigned():
    got = {assign_split(f"x/{i}", 1, (1.0, 0.0, 0.0)) for i in range(500)}
    assert got == {"train"}
    got = {assign_split(f"x/{i}", 1, (0.5, 0.0, 0.5)) for i in range(500)}
    assert got == {"train", "test"}


def test_caltech_numeric_prefixes_give_indices():
    m = LabelMapping.from_folders(["003.backpack", "001.ak47", "257.clutter", "002.american-flag"])
    assert m.source == "numeric_prefix"
    assert m.labels == ("ak47", "american-flag", "backpack", "clutter")
    assert m.index_of_folder()["001.ak47"] == 0
    assert m.index_of_folder()["257.clutter"] == 3


def test_without_prefixes_sorted_names():
    m = LabelMapping.from_folders(["dog", "cat", "001.ak47"])
    assert m.source == "sorted_names"
    assert m.labels == ("001.ak47", "cat", "dog")


def test_label_clash_is_an_error():
    with pytest.raises(DataError, match="both give label 'cat'"):
        LabelMapping.from_folders(["001.cat", "002.cat"])
    with pytest.raises(DataError, match="no class folders"):
        LabelMapping.from_folders([])


def test_relative_path_across_uri_spellings():
    assert relative_path("file:/d/root/001.a/x.jpg", "file:/d/root") == "001.a/x.jpg"
    assert relative_path("file:///d/root/001.a/x.jpg", "file:/d/root") == "001.a/x.jpg"
    assert relative_path("hdfs://nn:9000/root/a/b/c.jpg", "hdfs://nn:9000/root/") == "a/b/c.jpg"
    with pytest.raises(DataError, match="not below the input root"):
        relative_path("file:/elsewhere/x.jpg", "file:/d/root")
