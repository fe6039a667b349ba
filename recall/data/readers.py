"""Read interactions and user side features from Parquet, CSV or MovieLens files; write interactions.

Raw ids keep their type: integer columns come back as int64, anything else as str, so an id read
from a ratings file joins with the same id read from a users file. Every mistake a user can make
(wrong path, wrong column name, wrong delimiter, broken rows) raises `RecallError` with one line
naming the file, the column or config field, and the fix.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recall.data.features import apply_prefix, check_prefix
from recall.errors import RecallError
from recall.io import atomic_path

log = logging.getLogger(__name__)

DEFAULT_COLUMNS = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"}
# Header names of MovieLens ratings.csv (userId, movieId) and ratings.dat docs, accepted when the
# configured name is absent from the file.
_ALIASES = {
    "user": ("userId", "UserID"),
    "item": ("movieId", "MovieID"),
    "timestamp": ("Timestamp",),
    "rating": ("Rating",),
}
_WHAT = {"user": "user id", "item": "item id", "timestamp": "timestamp", "rating": "rating", "weight": "weight"}
_DELIMITERS = ",\t;|"
_SUFFIX_KIND = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv",
                ".txt": "csv", ".dat": "dat"}
_RATINGS_DAT = ["user_id", "item_id", "rating", "timestamp"]  # UserID::MovieID::Rating::Timestamp
_USERS_DAT = ["user_id", "gender", "age", "occupation", "zip_code"]  # UserID::Gender::Age::Occupation::Zip-code
_BUILTIN = {"ml-latest-small": "ml_latest_small"}
_INT_TEXT = r"[+-]?\d{1,18}"  # fits int64
_FORMAT_FIX = "set data.format to parquet, csv or movielens"
_USERS_FIX = "give data.user_features.path a suffix that matches its content (.parquet, .csv or .dat)"


def builtin_dataset_path(name: str = "ml-latest-small") -> Path:
    """The folder of a dataset bundled with the package (ratings.parquet, movies.parquet, README.txt)."""
    if name not in _BUILTIN:
        raise RecallError(f"data.name: unknown built-in dataset {name!r}; use one of: {', '.join(_BUILTIN)}")
    return Path(str(files("recall.datasets") / _BUILTIN[name]))


def read_interactions(
    path: str | Path,
    fmt: str = "auto",
    delimiter: str | None = None,
    columns: dict | None = None,
    min_rating: float | None = None,
    keep_users=None,
) -> pd.DataFrame:
    """Interactions as a frame with columns user_id, item_id, timestamp (+ rating when the file has one).

    `path` is a file or a folder holding ratings.parquet, ratings.csv or ratings.dat (first found), or
    else a folder of Parquet shards (every `*.parquet` / `*.pq` under it, names starting with `.` or `_`
    skipped, read in sorted path order, all with the same columns).
    `fmt` is auto (by suffix), parquet, csv or movielens (ratings.dat, or ratings.csv by suffix).
    `columns` maps user/item/timestamp/rating to the file's column names. Rows rated below
    `min_rating` are dropped; exact duplicate (user, item, timestamp) rows are dropped with a warning.

    `keep_users(user_ids [R]) → bool [R]` (a worker's share of users, data/shards.py): only the rows of
    the users it keeps are returned. Parquet is read a batch of rows at a time and each batch filtered
    before the next is read, so only the kept rows are held; CSV and .dat are read whole, then filtered.
    """
    names = {**DEFAULT_COLUMNS, "weight": None}
    for key, value in (columns or {}).items():
        if key not in names:
            raise RecallError(f"data.columns.{key}: unknown key; use one of {', '.join(names)}")
        names[key] = value
    shards = _parquet_shards(path, ("ratings.parquet", "ratings.csv", "ratings.dat"))
    file = shards[0] if shards else _resolve(path, ("ratings.parquet", "ratings.csv", "ratings.dat"), "data.path")
    kind = "parquet" if shards else _kind(file, fmt, _FORMAT_FIX)
    sep = _delimiter(file, delimiter) if kind == "csv" else None
    found = _header(file, kind, sep, _RATINGS_DAT, _FORMAT_FIX)
    if kind == "dat":  # fixed layout, no header: the configured names do not apply
        if names["weight"]:
            raise RecallError(f"{file}: a MovieLens .dat file has no weight column; unset data.columns.weight "
                              "or convert the log to CSV/Parquet with one")
        names = {k: DEFAULT_COLUMNS.get(k) for k in names}
    col = {k: _find(file, found, names[k], k, sep) for k in ("user", "item", "timestamp")}
    rating = _find(file, found, names["rating"], "rating", sep, required=False)
    weight = _find(file, found, names["weight"], "weight", sep) if names["weight"] else None
    if min_rating is not None and rating is None:
        raise RecallError(
            f"{file}: data.min_rating={min_rating} is set but there is no rating column "
            f"{names['rating']!r} (columns found: {_list(found)}); set data.columns.rating or remove data.min_rating"
        )
    usecols = list(dict.fromkeys([*col.values(), *([rating] if rating else []), *([weight] if weight else [])]))

    def frame(raw: pd.DataFrame, source: Path) -> pd.DataFrame:  # raw columns → the typed frame
        df = pd.DataFrame({
            "user_id": _ids(raw[col["user"]], source, col["user"], "user"),
            "item_id": _ids(raw[col["item"]], source, col["item"], "item"),
            "timestamp": _timestamps(raw[col["timestamp"]], source, col["timestamp"]),
        })
        if rating is not None:
            df["rating"] = _ratings(raw[rating], source, rating)
        if weight is not None:
            df["weight"] = _weights(raw[weight], source, weight)
        return df if keep_users is None else df[keep_users(df["user_id"].to_numpy())]

    if kind == "parquet" and (shards or keep_users is not None):
        df, rows = _read_parquet_rows(shards or [file], usecols, frame)
    else:
        raw = _load(file, kind, sep, usecols, _RATINGS_DAT, _FORMAT_FIX, as_text=False)
        df, rows = frame(raw, file), len(raw)
    source = path if shards else file
    if rows == 0:
        where = f"{path}: its Parquet shards hold" if shards else f"{file}: the file has"
        raise RecallError(f"{where} no interactions (no data rows); point data.path at a non-empty log")
    if min_rating is not None and not df.empty:
        lo, hi = df["rating"].min(), df["rating"].max()
        df = df[df["rating"] >= min_rating]
        if df.empty and keep_users is None:
            raise RecallError(
                f"{source}: no rows left after min_rating={min_rating} (ratings range {lo:g}..{hi:g}); lower data.min_rating"
            )
    dup = df.duplicated(["user_id", "item_id", "timestamp"])
    if dup.any():
        log.warning("%s: dropped %d duplicate rows (same user, item and timestamp)", source, int(dup.sum()))
        df = df[~dup]
    return df.reset_index(drop=True)


def read_user_features(
    path: str | Path,
    key: str = "user_id",
    columns: list[str] | None = None,
    prefix: dict[str, int] | None = None,
    delimiter: str | None = None,
) -> pd.DataFrame:
    """User side features indexed by raw user id (index name user_id), every value a str (NaN → "").

    `path` is a Parquet or CSV file, a MovieLens users.dat, or a folder holding users.{parquet,csv,dat}.
    `columns` lists the features to keep (None or empty: every column but the key); `prefix` keeps
    the first n characters of a column, e.g. {"zip_code": 2}. Training reads the raw values (no
    prefix here) and passes the prefix to `features.encode_user_features`, which keeps both forms:
    the export replays the raw ones through the served tower, which applies the prefix itself.
    """
    file = _resolve(path, ("users.parquet", "users.csv", "users.dat"), "data.user_features.path")
    kind = _kind(file, "auto", _USERS_FIX)
    sep = _delimiter(file, delimiter) if kind == "csv" else None
    found = _header(file, kind, sep, _USERS_DAT, _USERS_FIX)
    if key not in found:
        raise RecallError(
            f"{file}: no key column {key!r} (columns found: {_list(found)}); set data.user_features.key"
        )
    wanted = list(columns) if columns else [c for c in found if c != key]
    for c in wanted:
        if c == key:
            raise RecallError(f"data.user_features.columns: {c!r} is the key column; remove it from the list")
        if c not in found:
            raise RecallError(
                f"{file}: no column {c!r} (columns found: {_list(found)}); fix data.user_features.columns"
            )
    check_prefix(prefix, wanted)
    raw = _load(file, kind, sep, list(dict.fromkeys([key, *wanted])), _USERS_DAT, _USERS_FIX, as_text=True)
    if raw.empty:
        raise RecallError(f"{file}: no users (the file has no data rows); point data.user_features.path at a non-empty file")
    ids = _ids(raw[key], file, key, "user", from_text=kind != "parquet")
    dup = ids.duplicated()
    if dup.any():
        raise RecallError(
            f"{file}: column {key!r} lists {ids[dup].nunique()} user id(s) more than once "
            f"(e.g. {ids[dup].iloc[0]!r}); keep one row per user"
        )
    out = {}
    for c in wanted:
        text = _as_text(raw[c])
        out[c] = pd.Series(apply_prefix(text.to_numpy(), prefix[c]), index=text.index) if prefix and c in prefix else text
    return pd.DataFrame(out, index=raw.index).set_axis(pd.Index(ids.to_numpy(), name="user_id"))


def write_interactions(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame as .parquet (zstd) or .csv/.tsv, chosen by suffix, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".tsv"):
        raise RecallError(f"{path}: cannot tell the output format from {suffix or 'no suffix'!r}; name it .parquet or .csv")
    with atomic_path(path) as tmp:
        if suffix in (".parquet", ".pq"):
            df.to_parquet(tmp, index=False, compression="zstd")
        else:
            df.to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")
    return path


# --- locating and reading files -------------------------------------------------------------------


def _parquet_shards(path: str | Path, names: tuple[str, ...]) -> list[Path]:
    """The Parquet files of a folder of shards ([] when `path` is a file, or a folder holding one of
    `names`, which is read as before); a RecallError when the folder holds neither."""
    p = Path(path).expanduser()
    if not p.is_dir() or any((p / name).is_file() for name in names):
        return []
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in (".parquet", ".pq")
                   and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))
    if not files:
        raise RecallError(f"{p}: the folder holds none of {', '.join(names)} and no Parquet shards (*.parquet); "
                          "set data.path to the log file, or to a folder of Parquet files")
    return files


def _read_parquet_rows(files: list[Path], usecols: list[str], frame, batch_rows: int = 1 << 20):
    """(the frames `frame(raw batch, file)` returns, concatenated; the rows read) over the Parquet
    `files`, a batch of up to `batch_rows` rows at a time: only what `frame` keeps is held."""
    parts, rows = [], 0
    for file in files:
        try:
            reader = pq.ParquetFile(file)
            missing = [c for c in usecols if c not in reader.schema_arrow.names]
            if missing:
                raise RecallError(f"{file}: no column {missing[0]!r} (columns found: {_list(reader.schema_arrow.names)}); "
                                  "every Parquet shard needs the log's columns (data.columns)")
            for batch in reader.iter_batches(batch_size=batch_rows, columns=usecols):
                raw = batch.to_pandas()
                rows += len(raw)
                parts.append(frame(raw, file))
        except (pa.ArrowException, OSError, ValueError) as e:
            raise _unreadable(file, "parquet", e, _FORMAT_FIX) from None
    if not parts:
        return pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []}), 0
    df = pd.concat(parts, ignore_index=True)
    for c in ("user_id", "item_id"):  # batches typed apart (ints in one, text in another): all text
        if df[c].dtype == object:
            df[c] = df[c].astype(str)
    return df, rows


def _resolve(path: str | Path, names: tuple[str, ...], field: str) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        for name in names:
            if (p / name).is_file():
                return p / name
        raise RecallError(f"{p}: the folder holds none of {', '.join(names)}; set {field} to the file itself")
    if not p.is_file():
        raise RecallError(
            f"{p}: file not found; set {field} to an existing .parquet, .csv or .dat file (or a folder holding {names[0]})"
        )
    return p


def _suffix(file: Path) -> str:
    suffixes = [s.lower() for s in file.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _kind(file: Path, fmt: str, fix: str) -> str:
    """parquet, csv or dat (the MovieLens '::' layout)."""
    suffix = _suffix(file)
    if fmt == "auto":
        if suffix not in _SUFFIX_KIND:
            raise RecallError(
                f"{file}: cannot tell the format from the suffix {suffix or '(none)'!r}; {fix}"
            )
        return _SUFFIX_KIND[suffix]
    if fmt == "movielens":
        return "csv" if suffix == ".csv" else "dat"
    if fmt in ("parquet", "csv", "dat"):
        return fmt
    raise RecallError(f"data.format: unknown format {fmt!r}; use auto, parquet, csv or movielens")


def _open_bytes(file: Path) -> io.BufferedIOBase:
    return gzip.open(file, "rb") if file.suffix.lower() == ".gz" else open(file, "rb")


def _delimiter(file: Path, given: str | None) -> str:
    """The given delimiter ('\\t' and 'tab' mean a tab), else sniffed from the first lines."""
    if given:
        return "\t" if given in ("\\t", "tab") else given
    try:
        with _open_bytes(file) as f:
            sample = f.read(64 * 1024).decode("utf-8", errors="replace")
    except OSError as e:
        raise _unreadable(file, "csv", e, "fix its permissions") from None
    lines = sample.splitlines()[:50] or [""]
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=_DELIMITERS).delimiter
    except csv.Error:  # e.g. a single column: fall back to what the header line holds most of
        counts = {d: lines[0].count(d) for d in _DELIMITERS}
        best = max(counts, key=counts.get)
        return best if counts[best] else ("\t" if _suffix(file) == ".tsv" else ",")


def _header(file: Path, kind: str, sep: str | None, dat_names: list[str], fix: str) -> list[str]:
    try:
        if kind == "parquet":
            return list(pq.read_schema(file).names)
        if kind == "dat":
            with _open_bytes(file) as f:
                first = f.readline()
            if first.strip() and b"::" not in first:
                raise RecallError(
                    f"{file}: not a MovieLens .dat file (no '::' in the first line); {fix}"
                )
            return list(dat_names)
        return [str(c) for c in _read_csv(file, sep, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise RecallError(f"{file}: the file is empty; point the path at a file with a header and rows") from None
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError, csv.Error) as e:
        raise _unreadable(file, kind, e, fix) from None


def _load(file: Path, kind: str, sep: str | None, usecols: list[str], dat_names: list[str],
          fix: str, as_text: bool) -> pd.DataFrame:
    try:
        if kind == "parquet":
            return pd.read_parquet(file, columns=usecols)
        dtype = str if as_text else None
        if kind == "dat":
            # '::' needs pandas' slow python engine; swap it for one byte and use the C parser.
            with _open_bytes(file) as f:
                data = f.read().replace(b"::", b"\x1f")
            return pd.read_csv(io.BytesIO(data), sep="\x1f", header=None, names=dat_names,
                               usecols=usecols, dtype=dtype, encoding="latin-1")
        return _read_csv(file, sep, usecols=usecols, dtype=dtype, say_encoding=True)
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError, csv.Error) as e:
        raise _unreadable(file, kind, e, fix) from None


def _read_csv(file: Path, sep: str | None, say_encoding: bool = False, **kwargs) -> pd.DataFrame:
    """pd.read_csv as UTF-8, or as latin-1 when the file is not UTF-8 (said once per file, by the
    read that loads the rows: `say_encoding`; the header read before it stays quiet)."""
    engine = "c" if sep and len(sep) == 1 else "python"
    try:
        return pd.read_csv(file, sep=sep, engine=engine, **kwargs)
    except UnicodeDecodeError:  # MovieLens and many old exports are latin-1
        if say_encoding:
            log.warning("%s: not UTF-8, read as latin-1 (every byte is a character there, so text ids may "
                        "come out garbled if it is another encoding); save the file as UTF-8 to be sure", file)
        return pd.read_csv(file, sep=sep, engine=engine, encoding="latin-1", **kwargs)


def _unreadable(file: Path, kind: str, err: Exception, fix: str) -> RecallError:
    lines = str(err).strip().splitlines()
    reason = lines[0][:160] if lines else type(err).__name__
    name = {"parquet": "Parquet", "csv": "CSV", "dat": "MovieLens .dat"}[kind]
    return RecallError(f"{file}: cannot read it as {name} ({reason}); check the file is intact, or {fix}")


def _find(file: Path, found: list[str], want: str, logical: str, sep: str | None,
          required: bool = True) -> str | None:
    if want in found:
        return want
    for alias in _ALIASES.get(logical, ()):
        if alias in found:
            return alias
    if not required:
        return None
    if len(found) == 1:
        other = next((d for d in _DELIMITERS if d != sep and d in found[0]), None)
        if other is not None:
            raise RecallError(
                f"{file}: only one column {found[0]!r}; looks like a {other!r}-delimited file: set data.delimiter to {other!r}"
            )
    raise RecallError(
        f"{file}: no {_WHAT[logical]} column {want!r} (columns found: {_list(found)}); set data.columns.{logical}"
    )


def _rows(n: int) -> str:
    return "1 row has" if n == 1 else f"{n} rows have"


def _list(names: list[str], limit: int = 20) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


# --- column conversion ------------------------------------------------------------------------------


def _ids(s: pd.Series, file: Path, col: str, logical: str, from_text: bool = False) -> pd.Series:
    """Raw ids: integers (and integral floats) as int64, anything else as str.

    `from_text`: the column was read from CSV as text (users files, to keep zip codes' zeros), so
    all-digit ids become int64 exactly as pandas would have inferred them.
    """
    missing = s.isna()
    if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
        missing |= s.astype(str).str.strip() == ""
    if missing.any():
        raise RecallError(
            f"{file}: {_rows(int(missing.sum()))} no {_WHAT[logical]} (column {col!r} is empty/NaN); "
            "clean the file: drop or fill those rows"
        )
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(s.cat.categories.dtype)
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.astype(str)
    if pd.api.types.is_integer_dtype(s.dtype):
        if pd.api.types.is_unsigned_integer_dtype(s.dtype) and s.max() > np.iinfo(np.int64).max:
            return s.astype(str)
        return s.astype("int64")
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy(dtype="float64")
        if np.isfinite(v).all() and (v == np.round(v)).all() and (np.abs(v) < 2**53).all():
            return pd.Series(v.astype(np.int64), index=s.index)
        return s.astype(str)
    text = s.astype(str)
    if from_text and text.str.fullmatch(_INT_TEXT).all():
        return text.astype("int64")
    return text


def _timestamps(s: pd.Series, file: Path, col: str) -> pd.Series:
    """Unix seconds as int64 from integers, floats (floored), numeric strings or date-times."""
    n_missing = int(s.isna().sum())
    if n_missing:
        raise RecallError(
            f"{file}: {_rows(n_missing)} no timestamp (column {col!r}); clean the file: drop or fill those rows"
        )
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(s.dtype):
        return s.astype("datetime64[s]").astype("int64")
    if pd.api.types.is_bool_dtype(s.dtype):
        raise _bad_time(file, col, s.iloc[0])
    if not pd.api.types.is_numeric_dtype(s.dtype):
        numeric = pd.to_numeric(s, errors="coerce")
        if numeric.isna().any():  # not numbers: accept date-times (ISO-8601 text, date objects)
            try:
                fmt = "ISO8601" if pd.api.types.is_string_dtype(s) else None
                return _timestamps(pd.to_datetime(s, utc=True, format=fmt), file, col)
            except (ValueError, TypeError):
                raise _bad_time(file, col, s[numeric.isna()].iloc[0]) from None
        s = numeric
    if pd.api.types.is_integer_dtype(s.dtype):
        return s.astype("int64")
    v = s.to_numpy(dtype="float64")
    if not np.isfinite(v).all():
        raise _bad_time(file, col, v[~np.isfinite(v)][0])
    return pd.Series(np.floor(v).astype(np.int64), index=s.index)


def _bad_time(file: Path, col: str, example: object) -> RecallError:
    return RecallError(
        f"{file}: column {col!r} has non-numeric timestamps (e.g. {example!r}); "
        "use Unix seconds or ISO-8601 date-times, or set data.columns.timestamp"
    )


def _ratings(s: pd.Series, file: Path, col: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("float64")
    numeric = pd.to_numeric(s, errors="coerce")
    bad = s.notna() & numeric.isna()
    if bad.any():
        raise RecallError(
            f"{file}: column {col!r} has non-numeric ratings (e.g. {s[bad].iloc[0]!r}); "
            "clean the file or set data.columns.rating"
        )
    return numeric.astype("float64")


def _weights(s: pd.Series, file: Path, col: str) -> pd.Series:
    """Sample weights: finite numbers ≥ 0 (a weight multiplies its example's loss)."""
    numeric = pd.to_numeric(s, errors="coerce").astype("float64")
    bad = numeric.isna() | ~np.isfinite(numeric) | (numeric < 0)
    if bad.any():
        raise RecallError(f"{file}: column {col!r} (data.columns.weight) must hold finite numbers ≥ 0, found "
                          f"{s[bad].iloc[0]!r}; clean the column or unset data.columns.weight")
    return numeric


def _as_text(s: pd.Series) -> pd.Series:
    """Feature values as str; integral floats lose their '.0'; NaN becomes ''."""
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.dropna()
        if (v == np.round(v)).all():
            s = s.astype("Int64")
    return s.astype(str).where(s.notna(), "").astype(str)
