"""MMRec folder reading (SPEC §1): good folders load exactly, every malformed one fails with a
DataError naming the file and the line (or the array and the row)."""
import re

import numpy as np
import pytest

from mambarec_fast.data import DataError, MMRecDataset, load_dataset, load_mmrec, write_mmrec

HEADER = "userID\titemID\trating\ttimestamp\tx_label"
# users 0..3, items 0..4; user 3 has valid/test rows only (cold start: dropped)
ROWS = ["0\t0\t5.0\t100\t0", "0\t1\t3.0\t101\t0", "0\t2\t4.0\t102\t1", "1\t1\t2.0\t103\t0",
        "1\t3\t1.0\t104\t2", "2\t4\t4.5\t105\t0", "3\t0\t4.0\t106\t1", "3\t2\t4.0\t107\t2"]


def make_folder(root, rows=ROWS, header=HEADER, name="toy", features=None, inter_name=None):
    """`root/name/` with an .inter file and the given `{file name: array}` feature files."""
    folder = root / name
    folder.mkdir()
    (folder / (inter_name or f"{name}.inter")).write_text("\n".join([header, *rows]) + "\n")
    if features is None:
        rng = np.random.default_rng(0)
        features = {"image_feat.npy": rng.random((5, 6), dtype=np.float32),
                    "text_feat.npy": rng.random((5, 3), dtype=np.float32)}
    for file_name, array in features.items():
        np.save(folder / file_name, array)
    return folder


def test_loads_splits_and_drops_cold_start_users(tmp_path):
    data = load_mmrec(make_folder(tmp_path))
    assert (data.name, data.n_users, data.n_items) == ("toy", 4, 5)
    np.testing.assert_array_equal(data.train, [[0, 0], [0, 1], [1, 1], [2, 4]])
    np.testing.assert_array_equal(data.valid, [[0, 2]])  # user 3's rows are gone
    np.testing.assert_array_equal(data.test, [[1, 3]])
    assert all(a.dtype == np.int64 and a.flags.c_contiguous for a in (data.train, data.valid, data.test))
    assert sorted(data.features) == ["image", "text"]
    assert data.features["image"].dtype == np.float32 and data.features["image"].shape == (5, 6)


def test_train_items_per_user_is_csr_of_distinct_items(tmp_path):
    rows = ROWS + ["0\t1\t3.0\t108\t0"]  # a duplicate train row counts once
    indptr, items = load_mmrec(make_folder(tmp_path, rows=rows)).train_items_per_user
    np.testing.assert_array_equal(indptr, [0, 2, 3, 4, 4])
    np.testing.assert_array_equal(items, [0, 1, 1, 4])


def test_crlf_blank_lines_extra_columns_and_column_order(tmp_path):
    header = "x_label\tfoo\titemID\tuserID"
    rows = ["0\ta\t0\t0", "", "0\tb\t1\t1", "2\tc\t1\t0"]
    folder = tmp_path / "crlf"
    folder.mkdir()
    (folder / "crlf.inter").write_bytes(("\r\n".join([header, *rows]) + "\r\n").encode())
    data = load_mmrec(folder)
    np.testing.assert_array_equal(data.train, [[0, 0], [1, 1]])
    np.testing.assert_array_equal(data.test, [[0, 1]])
    assert data.features == {}


def test_single_inter_file_with_another_name(tmp_path):
    data = load_mmrec(make_folder(tmp_path, name="ml100k-mm", inter_name="ml100k.inter"))
    assert len(data.train) == 4


def test_requested_modalities_only_and_missing_file_omitted(tmp_path):
    rng = np.random.default_rng(0)
    folder = make_folder(tmp_path, features={"text_feat.npy": rng.random((5, 3), dtype=np.float32)})
    assert sorted(load_mmrec(folder).features) == ["text"]
    assert load_mmrec(folder, modalities=["image"]).features == {}
    assert sorted(load_mmrec(folder, modalities="text").features) == ["text"]


def test_features_of_other_float_dtypes_become_float32(tmp_path):
    feats = {"image_feat.npy": np.arange(10, dtype=np.float64).reshape(5, 2)}
    data = load_mmrec(make_folder(tmp_path, features=feats))
    assert data.features["image"].dtype == np.float32
    np.testing.assert_array_equal(data.features["image"], np.arange(10).reshape(5, 2))


def test_write_load_round_trip(tmp_path):
    data = load_mmrec(make_folder(tmp_path))
    write_mmrec(data, tmp_path / "copy")
    again = load_mmrec(tmp_path / "copy")
    assert (again.n_users, again.n_items) == (3, 5)  # user 3 was cold start: no row left for it
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(again, split), getattr(data, split))
    for m in data.features:
        np.testing.assert_array_equal(again.features[m], data.features[m])


# --- malformed input: one case each; the message must name the file and line, or array and row ---

def expect_error(folder, *patterns, **kwargs):
    with pytest.raises(DataError) as info:
        load_mmrec(folder, **kwargs)
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), f"{pattern!r} not in {info.value}"


def test_missing_column(tmp_path):
    folder = make_folder(tmp_path, header="userID\titemID\trating\ttimestamp\tlabel")
    expect_error(folder, r"toy\.inter", r"line 1", r"x_label")


@pytest.mark.parametrize("bad,line,what", [
    ("0\t1.5\t1\t1\t0", 3, r"itemID '1\.5' is not an integer"),
    ("x\t1\t1\t1\t0", 3, r"userID 'x' is not an integer"),
    ("0\t1\t1\t1\t", 3, r"x_label '' is not an integer"),
])
def test_non_integer_id(tmp_path, bad, line, what):
    rows = [ROWS[0], bad, *ROWS[2:]]
    expect_error(make_folder(tmp_path, rows=rows), r"toy\.inter", rf"line {line}\b", what)


def test_negative_id(tmp_path):
    rows = [*ROWS[:4], "-2\t1\t1\t1\t0", *ROWS[4:]]
    expect_error(make_folder(tmp_path, rows=rows), r"toy\.inter", r"line 6\b", r"userID -2 is negative")


def test_x_label_out_of_range(tmp_path):
    rows = [*ROWS, "2\t2\t1\t1\t3"]
    expect_error(make_folder(tmp_path, rows=rows), r"toy\.inter", r"line 10\b", r"x_label 3")


def test_wrong_field_count(tmp_path):
    rows = [*ROWS[:2], "0\t3\t1\t0", *ROWS[2:]]
    expect_error(make_folder(tmp_path, rows=rows), r"toy\.inter", r"line 4\b", r"4 tab-separated fields, expected 5")


def test_every_data_line_shorter_than_header(tmp_path):
    rows = ["0\t0\t0", "1\t1\t0"]
    expect_error(make_folder(tmp_path, rows=rows, header="userID\titemID\trating\tx_label"), r"line 2\b", r"3 tab")


def test_feature_rows_differ_from_item_count(tmp_path):
    folder = make_folder(tmp_path, features={"image_feat.npy": np.zeros((4, 6), np.float32)})
    expect_error(folder, r"image_feat\.npy", r"4 rows", r"5 \(max itemID \+ 1\)")


def test_features_not_2d(tmp_path):
    folder = make_folder(tmp_path, features={"text_feat.npy": np.zeros(5, np.float32)})
    expect_error(folder, r"text_feat\.npy", r"2-D", r"\(5,\)")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_features_name_the_row(tmp_path, value):
    array = np.ones((5, 6), np.float32)
    array[3, 2] = value
    expect_error(make_folder(tmp_path, features={"image_feat.npy": array}), r"image_feat\.npy", r"row 3\b")


def test_float64_overflowing_float32_is_reported(tmp_path):
    array = np.ones((5, 2))
    array[1, 0] = 1e300
    expect_error(make_folder(tmp_path, features={"image_feat.npy": array}), r"image_feat\.npy", r"row 1\b")


def test_pickled_object_features_refused(tmp_path):
    array = np.empty((5, 2), dtype=object)
    folder = make_folder(tmp_path, features={})
    np.save(folder / "image_feat.npy", array, allow_pickle=True)
    expect_error(folder, r"image_feat\.npy")


def test_empty_train_split(tmp_path):
    rows = ["0\t0\t1\t1\t1", "1\t4\t1\t1\t2"]
    expect_error(make_folder(tmp_path, rows=rows), r"toy\.inter", r"train split")


def test_header_only(tmp_path):
    expect_error(make_folder(tmp_path, rows=[]), r"toy\.inter", r"no interaction rows")


def test_unknown_modality(tmp_path):
    expect_error(make_folder(tmp_path), r"unknown modalities \['audio'\]", modalities=("image", "audio"))


def test_missing_folder_and_inter_file(tmp_path):
    expect_error(tmp_path / "nowhere", r"nowhere", r"does not exist")
    (tmp_path / "empty").mkdir()
    expect_error(tmp_path / "empty", r"empty", r"no \.inter file")


def test_dataset_validates_its_arrays():
    good = np.zeros((1, 2), np.int64)
    with pytest.raises(DataError, match=r"train split: row 0 has item id 7 outside \[0, 3\)"):
        MMRecDataset("x", 2, 3, np.array([[0, 7]]), good, good)
    with pytest.raises(DataError, match=r"valid split: expected a numpy int64 array \[n, 2\], got int32"):
        MMRecDataset("x", 2, 3, good, good.astype(np.int32), good)
    with pytest.raises(DataError, match=r"test split: expected an integer array \[n, 2\].*\(1, 3\)"):
        MMRecDataset("x", 2, 3, good, good, np.zeros((1, 3), np.int64))
    with pytest.raises(DataError, match=r"image features: has 2 rows"):
        MMRecDataset("x", 2, 3, good, good, good, {"image": np.zeros((2, 4), np.float32)})


def test_load_dataset_on_a_folder(tmp_path):
    folder = make_folder(tmp_path)
    assert sorted(load_dataset(str(folder), modalities=["text"]).features) == ["text"]
    with pytest.raises(DataError, match=r"no such folder.*synthetic:NAME"):
        load_dataset(str(tmp_path / "nowhere"))


def test_real_ml100k(shared_data):
    data = load_mmrec(shared_data / "ml100k-mm")
    assert (data.n_users, data.n_items) == (943, 1682)
    assert len(data.train) + len(data.valid) + len(data.test) == 100_000  # every user has train rows
    assert {m: a.shape for m, a in data.features.items()} == {"image": (1682, 384), "text": (1682, 384)}
