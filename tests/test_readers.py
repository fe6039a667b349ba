"""Readers: every format, every dtype rule and every user error (one line, naming file and fix)."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recall.data import (
    builtin_dataset_path,
    read_interactions,
    read_user_features,
    write_interactions,
)
from recall.errors import RecallError

SHARED = Path(__file__).parents[1].parent / "shared" / "data"

ROWS = [  # user, item, rating, timestamp
    (1, 10, 4.0, 1000),
    (1, 11, 2.5, 1001),
    (2, 10, 5.0, 1002),
    (3, 12, 3.0, 1003),
]


def frame(**rename) -> pd.DataFrame:
    df = pd.DataFrame(ROWS, columns=["user_id", "item_id", "rating", "timestamp"])
    return df.rename(columns=rename)


def error(fn, *args, **kwargs) -> str:
    """Call fn expecting a RecallError; return its message after checking it is one line."""
    with pytest.raises(RecallError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def check_standard(df: pd.DataFrame, rating: bool = True) -> None:
    cols = ["user_id", "item_id", "timestamp"] + (["rating"] if rating else [])
    assert list(df.columns) == cols
    assert df["user_id"].tolist() == [1, 1, 2, 3]
    assert df["item_id"].tolist() == [10, 11, 10, 12]
    assert df["timestamp"].tolist() == [1000, 1001, 1002, 1003]
    assert df["user_id"].dtype == np.int64 and df["item_id"].dtype == np.int64
    assert df["timestamp"].dtype == np.int64
    if rating:
        assert df["rating"].dtype == np.float64
        assert df["rating"].tolist() == [4.0, 2.5, 5.0, 3.0]


# --- formats ------------------------------------------------------------------------------------


def test_parquet_int32_ids_become_int64(tmp_path):
    df = frame().astype({"user_id": "int32", "item_id": "int32", "rating": "float32"})
    df.to_parquet(tmp_path / "r.parquet")
    check_standard(read_interactions(tmp_path / "r.parquet"))


@pytest.mark.parametrize("sep, name", [(",", "r.csv"), ("\t", "r.tsv"), (";", "r.csv"), ("|", "r.txt")])
def test_csv_delimiter_is_sniffed(tmp_path, sep, name):
    frame().to_csv(tmp_path / name, sep=sep, index=False)
    check_standard(read_interactions(tmp_path / name))


def test_csv_delimiter_given(tmp_path):
    frame().to_csv(tmp_path / "r.csv", sep=";", index=False)
    check_standard(read_interactions(tmp_path / "r.csv", delimiter=";"))
    frame().to_csv(tmp_path / "t.csv", sep="\t", index=False)
    check_standard(read_interactions(tmp_path / "t.csv", delimiter="\\t"))  # as written in YAML


def test_movielens_ratings_dat(tmp_path):
    lines = [f"{u}::{i}::{int(r) if r == int(r) else r}::{t}" for u, i, r, t in ROWS]
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n")
    check_standard(read_interactions(tmp_path / "ratings.dat"))
    check_standard(read_interactions(tmp_path / "ratings.dat", fmt="movielens"))
    check_standard(read_interactions(tmp_path))  # a folder holding it


def test_gzipped_dat_and_csv(tmp_path):
    lines = [f"{u}::{i}::{r}::{t}" for u, i, r, t in ROWS]
    with gzip.open(tmp_path / "ratings.dat.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    check_standard(read_interactions(tmp_path / "ratings.dat.gz"))
    frame().to_csv(tmp_path / "r.csv.gz", sep=";", index=False)
    check_standard(read_interactions(tmp_path / "r.csv.gz"))


def test_movielens_ratings_csv_header_is_accepted(tmp_path):
    frame(user_id="userId", item_id="movieId").to_csv(tmp_path / "ratings.csv", index=False)
    check_standard(read_interactions(tmp_path / "ratings.csv"))
    check_standard(read_interactions(tmp_path / "ratings.csv", fmt="movielens"))


def test_folder_prefers_parquet_then_csv_then_dat(tmp_path):
    (tmp_path / "ratings.dat").write_text("9::9::1::9\n")
    frame().iloc[:2].to_csv(tmp_path / "ratings.csv", index=False)
    assert len(read_interactions(tmp_path)) == 2
    frame().to_parquet(tmp_path / "ratings.parquet")
    assert len(read_interactions(tmp_path)) == 4


def test_column_mapping_and_no_rating(tmp_path):
    df = frame(user_id="uid", item_id="iid", timestamp="ts").drop(columns="rating")
    df.to_parquet(tmp_path / "r.parquet")
    out = read_interactions(tmp_path / "r.parquet", columns={"user": "uid", "item": "iid", "timestamp": "ts"})
    check_standard(out, rating=False)


def test_string_ids_stay_strings_and_integral_float_ids_become_int(tmp_path):
    df = frame().astype({"item_id": "float64"})
    df["user_id"] = ["u1", "u1", "007", "u3"]
    df.to_parquet(tmp_path / "r.parquet")
    out = read_interactions(tmp_path / "r.parquet")
    assert out["user_id"].tolist() == ["u1", "u1", "007", "u3"]
    assert pd.api.types.is_string_dtype(out["user_id"])
    assert out["item_id"].dtype == np.int64 and out["item_id"].tolist() == [10, 11, 10, 12]


def test_datetime_timestamps_become_unix_seconds(tmp_path):
    when = pd.to_datetime([1000, 1001, 1002, 1003], unit="s")
    df = frame()
    df["timestamp"] = when
    df.to_parquet(tmp_path / "naive.parquet")
    check_standard(read_interactions(tmp_path / "naive.parquet"))
    df["timestamp"] = when.tz_localize("UTC").tz_convert("Europe/Paris")
    df.to_parquet(tmp_path / "aware.parquet")
    check_standard(read_interactions(tmp_path / "aware.parquet"))
    df["timestamp"] = [t.isoformat() + "Z" for t in when]
    df.to_csv(tmp_path / "iso.csv", index=False)
    check_standard(read_interactions(tmp_path / "iso.csv"))


def test_numeric_string_and_float_timestamps(tmp_path):
    df = frame()
    df["timestamp"] = ["1000", "1001", "1002", "1003"]
    df.to_parquet(tmp_path / "s.parquet")
    check_standard(read_interactions(tmp_path / "s.parquet"))
    df["timestamp"] = [1000.0, 1001.5, 1002.9, 1003.0]  # fractions are floored
    df.to_parquet(tmp_path / "f.parquet")
    check_standard(read_interactions(tmp_path / "f.parquet"))


def test_min_rating_filters(tmp_path):
    frame().to_parquet(tmp_path / "r.parquet")
    out = read_interactions(tmp_path / "r.parquet", min_rating=3.0)
    assert out["rating"].tolist() == [4.0, 5.0, 3.0]
    assert out.index.tolist() == [0, 1, 2]


def test_duplicate_rows_are_dropped_with_a_warning(tmp_path, caplog):
    df = pd.concat([frame(), frame().iloc[[0, 0, 2]]])
    df.to_parquet(tmp_path / "r.parquet")
    with caplog.at_level(logging.WARNING, logger="recall.data.readers"):
        out = read_interactions(tmp_path / "r.parquet")
    check_standard(out)
    assert "dropped 3 duplicate rows" in caplog.text


def test_latin1_csv_is_read_with_a_warning_naming_the_file(tmp_path, caplog):
    path = tmp_path / "latin1.csv"
    path.write_bytes("user_id,item_id,timestamp\nJosé,Café,1\nZoë,Thé,2\n".encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="recall.data.readers"):
        df = read_interactions(path)
    assert df.user_id.tolist() == ["José", "Zoë"] and df.item_id.tolist() == ["Café", "Thé"]
    warnings = [r.getMessage() for r in caplog.records if "latin-1" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: not UTF-8, read as latin-1"), warnings


def test_utf8_csv_reads_quietly(tmp_path, caplog):
    path = tmp_path / "utf8.csv"
    path.write_text("user_id,item_id,timestamp\nJosé,Café,1\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="recall.data.readers"):
        assert read_interactions(path).item_id.tolist() == ["Café"]
    assert caplog.records == []


def test_same_item_at_another_time_is_not_a_duplicate(tmp_path):
    df = pd.concat([frame(), frame().iloc[[0]].assign(timestamp=2000)])
    df.to_parquet(tmp_path / "r.parquet")
    assert len(read_interactions(tmp_path / "r.parquet")) == 5


def test_builtin_dataset():
    path = builtin_dataset_path()
    assert (path / "README.txt").is_file()
    df = read_interactions(path)
    assert len(df) == 100_836 and df["user_id"].nunique() == 610
    assert "data.name" in error(builtin_dataset_path, "ml-100m")


@pytest.mark.skipif(not (SHARED / "ml-1m" / "ratings_pos4.parquet").is_file(),
                    reason="../shared/data/ml-1m/ratings_pos4.parquet is not present (benchmark data)")
def test_ml1m_positives():
    df = read_interactions(SHARED / "ml-1m" / "ratings_pos4.parquet", min_rating=4)
    assert len(df) == 575_281
    assert df["user_id"].nunique() == 6_038 and df["item_id"].nunique() == 3_533


# --- errors ---------------------------------------------------------------------------------------


def test_missing_file_and_empty_folder(tmp_path):
    msg = error(read_interactions, tmp_path / "nope.parquet")
    assert "nope.parquet" in msg and "not found" in msg and "data.path" in msg
    msg = error(read_interactions, tmp_path)
    assert str(tmp_path) in msg and "ratings.parquet" in msg


def test_unknown_suffix(tmp_path):
    (tmp_path / "r.xlsx").write_text("x")
    msg = error(read_interactions, tmp_path / "r.xlsx")
    assert "r.xlsx" in msg and "data.format" in msg


def test_corrupt_parquet(tmp_path):
    (tmp_path / "r.parquet").write_bytes(b"PAR1 this is not parquet")
    msg = error(read_interactions, tmp_path / "r.parquet")
    assert "r.parquet" in msg and "cannot read it as Parquet" in msg


def test_empty_csv_and_header_only(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    assert "empty.csv: the file is empty" in error(read_interactions, tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("user_id,item_id,timestamp\n")
    msg = error(read_interactions, tmp_path / "header.csv")
    assert "header.csv" in msg and "no interactions" in msg


def test_missing_column_names_it_and_the_fix(tmp_path):
    frame(user_id="customer").to_csv(tmp_path / "r.csv", index=False)
    msg = error(read_interactions, tmp_path / "r.csv")
    assert "r.csv" in msg and "'user_id'" in msg and "'customer'" in msg and "data.columns.user" in msg


def test_wrong_delimiter_is_diagnosed(tmp_path):
    frame().to_csv(tmp_path / "r.csv", sep=";", index=False)
    msg = error(read_interactions, tmp_path / "r.csv", delimiter=",")
    assert "r.csv" in msg and "looks like a ';'-delimited file: set data.delimiter" in msg


def test_null_ids_are_counted(tmp_path):
    df = frame().astype({"user_id": "float64"})
    df.loc[[1, 3], "user_id"] = np.nan
    df.to_parquet(tmp_path / "r.parquet")
    msg = error(read_interactions, tmp_path / "r.parquet")
    assert "r.parquet" in msg and "2 rows have no user id" in msg and "'user_id'" in msg and "clean" in msg
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\n1,,5\n2,3,6\n")
    msg = error(read_interactions, tmp_path / "i.csv")
    assert "1 row has no item id" in msg and "'item_id'" in msg


def test_non_numeric_timestamps(tmp_path):
    df = frame()
    df["timestamp"] = ["1000", "yesterday", "1002", "1003"]
    df.to_csv(tmp_path / "r.csv", index=False)
    msg = error(read_interactions, tmp_path / "r.csv")
    assert "r.csv" in msg and "'timestamp'" in msg and "yesterday" in msg and "non-numeric" in msg


def test_non_numeric_ratings(tmp_path):
    df = frame().astype({"rating": object})
    df.loc[2, "rating"] = "five"
    df.to_csv(tmp_path / "r.csv", index=False)
    msg = error(read_interactions, tmp_path / "r.csv")
    assert "r.csv" in msg and "'rating'" in msg and "five" in msg


def test_min_rating_errors(tmp_path):
    frame().to_parquet(tmp_path / "r.parquet")
    msg = error(read_interactions, tmp_path / "r.parquet", min_rating=6)
    assert "r.parquet" in msg and "no rows left after min_rating=6" in msg
    frame().drop(columns="rating").to_parquet(tmp_path / "n.parquet")
    msg = error(read_interactions, tmp_path / "n.parquet", min_rating=4)
    assert "n.parquet" in msg and "data.min_rating" in msg and "'rating'" in msg


def test_dat_that_is_not_movielens(tmp_path):
    frame().to_csv(tmp_path / "ratings.dat", index=False)
    msg = error(read_interactions, tmp_path / "ratings.dat")
    assert "ratings.dat" in msg and "not a MovieLens .dat file" in msg


def test_unknown_column_key_and_format(tmp_path):
    frame().to_parquet(tmp_path / "r.parquet")
    assert "data.columns.usr" in error(read_interactions, tmp_path / "r.parquet", columns={"usr": "x"})
    assert "data.format" in error(read_interactions, tmp_path / "r.parquet", fmt="excel")


# --- user features --------------------------------------------------------------------------------

USERS = pd.DataFrame({
    "user_id": [1, 2, 3],
    "gender": ["F", "M", None],
    "age": [1, 56, 25],
    "zip_code": ["02460", "70072", "55117-1234"],
})


def test_user_features_parquet_with_prefix(tmp_path):
    USERS.to_parquet(tmp_path / "users.parquet")
    out = read_user_features(tmp_path / "users.parquet", columns=["gender", "age", "zip_code"],
                             prefix={"zip_code": 3})
    assert out.index.name == "user_id" and out.index.dtype == np.int64
    assert out.index.tolist() == [1, 2, 3]
    assert out.to_dict("list") == {"gender": ["F", "M", ""], "age": ["1", "56", "25"],
                                   "zip_code": ["024", "700", "551"]}


def test_user_features_csv_keeps_leading_zeros_and_int_keys(tmp_path):
    USERS.to_csv(tmp_path / "users.csv", index=False)
    out = read_user_features(tmp_path / "users.csv", columns=["zip_code", "gender"])
    assert out.index.dtype == np.int64  # joins with interactions' int64 user ids
    assert out["zip_code"].tolist() == ["02460", "70072", "55117-1234"]
    assert out["gender"].tolist() == ["F", "M", ""]


def test_user_features_movielens_dat_and_all_columns(tmp_path):
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    out = read_user_features(tmp_path)  # folder; no columns → every column but the key
    assert list(out.columns) == ["gender", "age", "occupation", "zip_code"]
    assert out.loc[2].tolist() == ["M", "56", "16", "70072"]


def test_user_features_float_column_with_nan(tmp_path):
    users = USERS.assign(age=[1.0, np.nan, 25.0])
    users.to_parquet(tmp_path / "u.parquet")
    assert read_user_features(tmp_path / "u.parquet", columns=["age"])["age"].tolist() == ["1", "", "25"]


def test_user_features_string_keys(tmp_path):
    USERS.assign(user_id=["a", "b", "c"]).to_parquet(tmp_path / "u.parquet")
    out = read_user_features(tmp_path / "u.parquet", columns=["gender"])
    assert out.index.tolist() == ["a", "b", "c"]


def test_user_features_errors(tmp_path):
    msg = error(read_user_features, tmp_path / "users.parquet", columns=["gender"])
    assert "users.parquet" in msg and "not found" in msg and "data.user_features.path" in msg
    USERS.to_parquet(tmp_path / "u.parquet")
    msg = error(read_user_features, tmp_path / "u.parquet", columns=["job"])
    assert "u.parquet" in msg and "'job'" in msg and "'zip_code'" in msg and "data.user_features.columns" in msg
    msg = error(read_user_features, tmp_path / "u.parquet", key="uid", columns=["gender"])
    assert "u.parquet" in msg and "'uid'" in msg and "data.user_features.key" in msg
    msg = error(read_user_features, tmp_path / "u.parquet", columns=["age"], prefix={"zip_code": 2})
    assert "data.user_features.prefix.zip_code" in msg
    pd.concat([USERS, USERS.iloc[[1]]]).to_parquet(tmp_path / "dup.parquet")
    msg = error(read_user_features, tmp_path / "dup.parquet", columns=["gender"])
    assert "dup.parquet" in msg and "'user_id' lists 1 user id(s) more than once" in msg
    (tmp_path / "bad.parquet").write_bytes(b"garbage")
    msg = error(read_user_features, tmp_path / "bad.parquet")
    assert "bad.parquet" in msg and "cannot read it as Parquet" in msg and "data.user_features.path" in msg
    (tmp_path / "u.json").write_text("{}")
    msg = error(read_user_features, tmp_path / "u.json")
    assert "u.json" in msg and "data.user_features.path" in msg
    USERS.assign(user_id=[1.0, np.nan, 3.0]).to_parquet(tmp_path / "null.parquet")
    msg = error(read_user_features, tmp_path / "null.parquet", columns=["gender"])
    assert "null.parquet" in msg and "1 row has no user id" in msg


# --- writing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.parquet", "sub/out.csv", "out.tsv"])
def test_write_then_read_round_trips(tmp_path, name):
    df = read_interactions(_write_frame(tmp_path))
    write_interactions(df, tmp_path / name)
    pd.testing.assert_frame_equal(read_interactions(tmp_path / name), df)
    assert not list((tmp_path / name).parent.glob(".*.tmp"))  # atomic: no temporary left behind


def test_write_unknown_suffix(tmp_path):
    msg = error(write_interactions, frame(), tmp_path / "out.xlsx")
    assert "out.xlsx" in msg and ".parquet" in msg
    assert not (tmp_path / "out.xlsx").exists()


def _write_frame(tmp_path: Path) -> Path:
    frame().to_parquet(tmp_path / "in.parquet")
    return tmp_path / "in.parquet"
