"""Tests for layerwise.data: the real task files, every local format, splits and data errors."""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO_PARAMS, make_keyword_texts, write_keyword_csv

from layerwise import data
from layerwise.config import ConfigError, LabelSpec, Params, TaskDef, load_params
from layerwise.data import DataError


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(REPO_PARAMS)


@pytest.fixture(scope="module")
def real_datasets(params: Params) -> dict[str, Any]:
    """Each default task built once from its installed package files."""
    return {
        key: data.build_dataset(params.task(key), params.data.min_chars, key)
        for key in ("sentiment", "rating", "topic")
    }


def label_counts(ds) -> dict[str, int]:
    names = ds.features["label"].names
    return {names[i]: c for i, c in sorted(Counter(ds["label"]).items())}


def kw_task(source: Path | str, **kwargs: Any) -> TaskDef:
    """A keyword task over a local file with small split sizes."""
    settings: dict[str, Any] = {"labels": LabelSpec(kind="column"), "max_train": 60}
    settings.update(max_val=20, max_analysis=30)
    settings.update(kwargs)
    return TaskDef(source=str(source), **settings)


# --------------------------------------------------------------------------------------------
# The default tasks, from their real package files (counts measured with this code).
# --------------------------------------------------------------------------------------------


def test_sentiment_real_counts(params: Params, real_datasets: dict[str, Any]) -> None:
    """Rotten Tomatoes: 10,605 rows; 533 with |mean| < 0.5 and 2 duplicates dropped."""
    raw_texts, raw_scores = data.load_raw(params.task("sentiment"))
    assert len(raw_texts) == 10605
    neutral = sum(abs(float(s)) < params.task("sentiment").labels.threshold for s in raw_scores)
    assert neutral == 533
    ds = real_datasets["sentiment"]
    assert len(ds) == 10070 == 10605 - 533 - 2
    assert label_counts(ds) == {"negative": 5075, "positive": 4995}
    assert len(set(ds["text"])) == len(ds)


def test_rating_real_counts(params: Params, real_datasets: dict[str, Any]) -> None:
    """Amazon snippets: 3,708 rows; 9 duplicates and 3 too-short texts dropped; 5 ordinal
    classes in bin order."""
    raw_texts, _ = data.load_raw(params.task("rating"))
    assert len(raw_texts) == 3708
    ds = real_datasets["rating"]
    assert len(ds) == 3696
    assert ds.features["label"].names == ["1", "2", "3", "4", "5"]
    assert label_counts(ds) == {"1": 145, "2": 933, "3": 1038, "4": 1142, "5": 438}


def test_topic_real_counts(real_datasets: dict[str, Any]) -> None:
    """BBC: 2,225 files, 100 (whitespace-normalised) duplicates dropped, 5 topics."""
    ds = real_datasets["topic"]
    assert len(ds) == 2125
    assert label_counts(ds) == {
        "business": 503,
        "entertainment": 369,
        "politics": 403,
        "sports": 503,
        "tech": 347,
    }


def test_topic_latin1_article_is_decoded(params: Params, real_datasets: dict[str, Any]) -> None:
    """sports/199.txt is latin-1: it is read (not skipped), its pound sign decoded, and the
    headline joined to the body by whitespace normalisation."""
    folder = data.resolve(params.task("topic").source)
    raw = (folder / "sports" / "199.txt").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert data.read_text_file(folder / "sports" / "199.txt").startswith("Chelsea sack Mutu\n")
    ds = real_datasets["topic"]
    matches = [i for i, t in enumerate(ds["text"]) if t.startswith("Chelsea sack Mutu Chelsea")]
    assert len(matches) == 1
    text = ds[matches[0]]["text"]
    assert "a £15.8m signing from Parma" in text
    assert "\ufffd" not in text
    assert ds.features["label"].int2str(ds[matches[0]]["label"]) == "sports"


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def check_splits(ds, splits, task: TaskDef) -> None:
    """Sizes as requested, disjoint, drawn from ds, and stratified (±2 texts per class)."""
    rest = len(ds) - task.max_val - task.max_analysis
    expected = {"train": min(task.max_train, rest), "val": task.max_val}
    expected["analysis"] = task.max_analysis
    assert {s: len(splits[s]) for s in data.SPLITS} == expected
    texts = {s: set(splits[s]["text"]) for s in data.SPLITS}
    assert all(len(texts[s]) == len(splits[s]) for s in data.SPLITS)
    assert not texts["train"] & texts["val"]
    assert not texts["train"] & texts["analysis"]
    assert not texts["val"] & texts["analysis"]
    assert set().union(*texts.values()) <= set(ds["text"])
    overall = np.bincount(ds["label"], minlength=len(ds.features["label"].names)) / len(ds)
    for s in data.SPLITS:
        counts = np.bincount(splits[s]["label"], minlength=len(overall))
        assert np.all(np.abs(counts - overall * len(splits[s])) <= 2), (s, counts)


@pytest.mark.parametrize("key", ["sentiment", "rating", "topic"])
def test_real_splits_are_stratified_disjoint_and_sized(
    params: Params, real_datasets: dict[str, Any], key: str
) -> None:
    """The default tasks split into the params' sizes, disjoint and label-stratified."""
    ds, task = real_datasets[key], params.task(key)
    splits = data.stratified_splits(ds, task, params.seed, key)
    check_splits(ds, splits, task)
    assert splits["train"].features == ds.features


def test_rating_split_counts_measured(params: Params, real_datasets: dict[str, Any]) -> None:
    """The rating splits at the params seed have these exact class counts (regression)."""
    splits = data.stratified_splits(real_datasets["rating"], params.task("rating"), 0, "rating")
    assert label_counts(splits["train"]) == {"1": 78, "2": 505, "3": 562, "4": 618, "5": 237}
    assert label_counts(splits["val"]) == {"1": 20, "2": 126, "3": 140, "4": 155, "5": 59}
    assert label_counts(splits["analysis"]) == {"1": 39, "2": 252, "3": 281, "4": 309, "5": 119}


def test_splits_depend_on_seed_only(params: Params, real_datasets: dict[str, Any]) -> None:
    """Same seed gives identical splits; another seed gives different ones."""
    ds, task = real_datasets["topic"], params.task("topic")
    a = data.stratified_splits(ds, task, 0, "topic")
    b = data.stratified_splits(ds, task, 0, "topic")
    c = data.stratified_splits(ds, task, 1, "topic")
    for s in data.SPLITS:
        assert a[s]["text"] == b[s]["text"]
        assert set(a[s]["text"]) != set(c[s]["text"])
    check_splits(ds, c, task)


def test_train_takes_the_whole_rest_when_capped_above_it(keyword_csv: Path) -> None:
    """With max_train above what is left, train is every remaining text (no text lost)."""
    task = kw_task(keyword_csv, max_train=1000)
    ds = data.build_dataset(task, 3, "kw")
    splits = data.stratified_splits(ds, task, 0, "kw")
    assert len(splits["train"]) == 120 - 20 - 30
    assert sum(len(splits[s]) for s in data.SPLITS) == len(ds)
    check_splits(ds, splits, task)


def test_split_sizes_exceeding_data_are_named(keyword_csv: Path) -> None:
    """val + analysis larger than the data fails naming both sizes and the data size."""
    task = kw_task(keyword_csv, max_val=80, max_analysis=50)
    ds = data.build_dataset(task, 3, "kw")
    with pytest.raises(ConfigError) as info:
        data.stratified_splits(ds, task, 0, "kw")
    message = str(info.value)
    for fragment in ("task_defs.kw", "max_val=80", "max_analysis=50", "of 120 texts"):
        assert fragment in message


def test_class_too_small_to_stratify(tmp_path: Path) -> None:
    """A class with one text cannot appear in every split: DataError names the sizes."""
    texts, labels = make_keyword_texts(40, 0)
    labels[0] = "neutral"
    path = tmp_path / "kw.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([("text", "label"), *zip(texts, labels, strict=True)])
    task = kw_task(path, max_train=20, max_val=8, max_analysis=8)
    ds = data.build_dataset(task, 3, "kw")
    with pytest.raises(DataError, match=r"task 'kw'.*'train': 20, 'val': 8, 'analysis': 8") as info:
        data.stratified_splits(ds, task, 0, "kw")
    assert "class(es) {'neutral': 1} have fewer than 3 texts" in str(info.value)


# --------------------------------------------------------------------------------------------
# Local formats
# --------------------------------------------------------------------------------------------


def _write(tmp_path: Path, fmt: str, texts: list[str], labels: list[str]) -> Path:
    import pandas as pd

    frame = pd.DataFrame({"sentence": texts, "y": labels, "extra": range(len(texts))})
    if fmt == "csv":
        path = tmp_path / "d.csv"
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        path = tmp_path / "d.tsv"
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        frame.to_parquet(path)
    else:  # folder: one sub-folder per label, one .txt per text
        path = tmp_path / "d"
        for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
            (path / label).mkdir(parents=True, exist_ok=True)
            (path / label / f"{i:03d}.txt").write_text(text + "\n")
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "folder"])
@pytest.mark.parametrize("declared", [True, False], ids=["declared", "auto"])
def test_local_formats_load(tmp_path: Path, fmt: str, declared: bool) -> None:
    """CSV, TSV, JSONL, Parquet and label folders give the same texts and labels, with the
    format declared or detected; text/label columns are taken from text_field/label_field."""
    texts, labels = make_keyword_texts(30, 1)
    path = _write(tmp_path, fmt, texts, labels)
    fmt_param = fmt if declared else "auto"
    task = kw_task(path, format=fmt_param, text_field="sentence", label_field="y")
    ds = data.build_dataset(task, 3, "kw")
    assert ds.features["label"].names == ["negative", "positive"]
    got = sorted(zip(ds["text"], ds.features["label"].int2str(ds["label"]), strict=True))
    assert got == sorted(zip(texts, labels, strict=True))


def test_directory_of_csv_files_is_concatenated(tmp_path: Path) -> None:
    """A folder of CSV shards loads as one table (sorted file order)."""
    folder = tmp_path / "shards"
    folder.mkdir()
    write_keyword_csv(folder / "part-0.csv", n=20, seed=1)
    write_keyword_csv(folder / "part-1.csv", n=20, seed=2)
    ds = data.build_dataset(kw_task(folder), 3, "kw")
    first, _ = make_keyword_texts(20, 1)
    assert len(ds) == 40
    assert ds["text"][:20] == first


def test_cleaning_normalises_and_drops(tmp_path: Path) -> None:
    """Whitespace is collapsed, short/empty texts and later duplicates dropped, first kept."""
    path = tmp_path / "d.csv"
    rows = [
        ("text", "label"),
        ("  good   film\n here ", "pos"),
        ("good film here", "neg"),  # duplicate after normalisation: dropped
        ("ok", "neg"),  # shorter than min_chars=3
        ("", "pos"),
        ("bad film", "neg"),
        ("some text", ""),  # no label: dropped
    ]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    ds = data.build_dataset(kw_task(path), 3, "kw")
    assert ds["text"] == ["good film here", "bad film"]
    assert ds.features["label"].int2str(ds["label"]) == ["pos", "neg"]


def test_map_labels_kinds() -> None:
    """sign drops |score| < threshold and zero; bins are equal-width in name order; map
    drops values outside the mapping."""
    sign = LabelSpec(kind="sign", threshold=0.5, names=["neg", "pos"])
    names, classes = data.map_labels(["-2", "-0.4", "0", "0.5", "3.9"], sign, "s")
    assert names == ["neg", None, None, "pos", "pos"]
    assert classes == ["neg", "pos"]
    bins = LabelSpec(kind="bins", low=0.0, high=4.0, names=["a", "b", "c", "d"])
    names, classes = data.map_labels([0, 0.5, 1.5, 2.5, 3.99, 4, 4.5, -0.1], bins, "s")
    assert names == ["a", "a", "b", "c", "d", "d", None, None]
    assert classes == ["a", "b", "c", "d"]
    mapping = LabelSpec(kind="map", mapping={"1": "yes", "0": "no"})
    names, classes = data.map_labels([1, "0", " 1 ", "2"], mapping, "s")
    assert names == ["yes", "no", "yes", None]
    assert classes == ["no", "yes"]
    with pytest.raises(DataError, match="label value 'high' is not a number"):
        data.map_labels(["1", "high"], sign, "s")


def test_bin_edges_follow_one_convention() -> None:
    """A score exactly on an interior edge lands on the same side of it for every edge."""
    spec = LabelSpec(kind="bins", low=-4.0, high=4.0, names=["1", "2", "3", "4", "5"])
    names, _ = data.map_labels(["-2.4", "-0.8", "0.8", "2.4"], spec, "s")
    offsets = {int(name) - 1 - edge for edge, name in enumerate(names, start=1)}
    assert len(offsets) == 1, names


@pytest.mark.parametrize(
    "spec",
    [
        LabelSpec(kind="sign", threshold=0.5, names=["neg", "pos"]),
        LabelSpec(kind="bins", low=-4.0, high=4.0, names=["1", "2", "3"]),
    ],
    ids=["sign", "bins"],
)
def test_nan_score_is_not_labelled(spec: LabelSpec) -> None:
    """A missing (NaN) score never becomes a class."""
    try:
        names, _ = data.map_labels([1.0, float("nan")], spec, "s")
    except DataError:
        return
    assert names[1] is None


def test_auto_format_finds_tables_in_subfolders(tmp_path: Path) -> None:
    """format auto on a repo whose table lives in data/ (the Hub's usual layout) reads it."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "README.md").write_text("# dataset card\n")
    write_keyword_csv(repo / "data" / "train.csv", n=20, seed=4)
    ds = data.build_dataset(kw_task(repo), 3, "kw")
    assert len(ds) == 20


def test_auto_format_label_folders_with_readme(tmp_path: Path) -> None:
    """format auto on label folders plus a README.txt still reads the label folders."""
    texts, labels = make_keyword_texts(10, 5)
    folder = _write(tmp_path, "folder", texts, labels)
    (folder / "README.txt").write_text("Ten keyword texts in two label folders.\n")
    ds = data.build_dataset(kw_task(folder), 3, "kw")
    assert sorted(ds["text"]) == sorted(texts)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "column", "what"),
    [("text_field", "review", "text column 'review'"), ("label_field", "stars", "label column")],
)
def test_missing_column_is_named(keyword_csv: Path, field: str, column: str, what: str) -> None:
    """A missing text or label column names the column and lists the columns present."""
    task = kw_task(keyword_csv, **{field: column})
    with pytest.raises(DataError) as info:
        data.build_dataset(task, 3, "kw")
    message = str(info.value)
    assert what in message
    assert repr(column) in message
    assert "columns present: ['text', 'label']" in message


@pytest.mark.parametrize(
    ("content", "parser_says"),
    [
        ("text,label\nhello there,positive\nbad,row,extra\n", "Expected 2 fields in line 3"),
        ('text,label\n"unclosed text,positive\nok,negative\n', "EOF inside string"),
    ],
    ids=["extra-field", "unclosed-quote"],
)
def test_malformed_csv_is_named(tmp_path: Path, content: str, parser_says: str) -> None:
    """A malformed CSV fails with its path and the parser's reason."""
    path = tmp_path / "broken.csv"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        data.build_dataset(kw_task(path), 3, "kw")
    message = str(info.value)
    assert f"{path} is not a readable csv file" in message
    assert parser_says in message


def test_unknown_format_is_named(tmp_path: Path) -> None:
    """A file with an unknown suffix and format auto asks for an explicit format."""
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"cannot tell the format of .*data\.xlsx"):
        data.build_dataset(kw_task(path), 3, "kw")


def test_mapping_leaving_a_class_empty(keyword_csv: Path) -> None:
    """A map whose target class gets no texts names that class and the counts."""
    spec = LabelSpec(
        kind="map", mapping={"positive": "pos", "negative": "neg", "neutral": "neutral"}
    )
    with pytest.raises(DataError) as info:
        data.build_dataset(kw_task(keyword_csv, labels=spec), 3, "kw")
    message = str(info.value)
    assert "['neutral'] have no texts" in message
    assert "'pos': 60" in message
    assert "task_defs.kw.labels" in message


def test_empty_after_cleaning(tmp_path: Path, keyword_csv: Path) -> None:
    """No texts left (header only, or all shorter than min_chars) names what was dropped."""
    header_only = tmp_path / "empty.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(DataError, match=r"no texts left after cleaning \(\{\} dropped from 0 rows"):
        data.build_dataset(kw_task(header_only), 3, "kw")
    with pytest.raises(DataError, match=r"no texts left .*'empty': 120.* 120 rows"):
        data.build_dataset(kw_task(keyword_csv), 10_000, "kw")


def test_one_class_data(tmp_path: Path) -> None:
    """Data with a single label fails: classification needs two classes."""
    texts, _ = make_keyword_texts(20, 0)
    path = tmp_path / "one.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([("text", "label"), *((t, "positive") for t in texts)])
    with pytest.raises(DataError, match=r"only one class \['positive'\]"):
        data.build_dataset(kw_task(path), 3, "kw")


def test_load_splits_without_prepare(tmp_path: Path) -> None:
    """Reading splits that were never prepared names the prepare stage to run."""
    with pytest.raises(FileNotFoundError, match=r"dvc repro prepare@kw"):
        data.load_splits(tmp_path / "kw")


# --------------------------------------------------------------------------------------------
# Text encodings
# --------------------------------------------------------------------------------------------

BOM_ENCODINGS = {
    "utf-8-sig": (codecs.BOM_UTF8, "utf-8"),
    "utf-16-le": (codecs.BOM_UTF16_LE, "utf-16-le"),
    "utf-16-be": (codecs.BOM_UTF16_BE, "utf-16-be"),
}


def with_bom(text: str, encoding: str) -> bytes:
    bom, codec = BOM_ENCODINGS[encoding]
    return bom + text.encode(codec)


def accented_texts(n: int) -> tuple[list[str], list[str]]:
    """Keyword texts with a non-ASCII word, so a wrong decoding cannot go unnoticed."""
    texts, labels = make_keyword_texts(n, 1)
    return [f"{t} café naïve" for t in texts], labels


def table_text(fmt: str, texts: list[str], labels: list[str]) -> str:
    if fmt == "jsonl":
        rows = zip(texts, labels, strict=True)
        return "".join(
            json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n" for t, lab in rows
        )
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\r\n")
    writer.writerows([("text", "label"), *zip(texts, labels, strict=True)])
    return out.getvalue()


def write_encoded(tmp_path: Path, fmt: str, encode: Any) -> tuple[Path, list[str], list[str]]:
    """A table or label-folder source whose files hold ``encode(text)``; returns the path and
    the texts and labels it holds."""
    texts, labels = accented_texts(30)
    if fmt == "folder":
        path = tmp_path / "d"
        for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
            (path / label).mkdir(parents=True, exist_ok=True)
            (path / label / f"{i:03d}.txt").write_bytes(encode(text + "\n"))
        return path, texts, labels
    path = tmp_path / f"d.{fmt}"
    path.write_bytes(encode(table_text(fmt, texts, labels)))
    return path, texts, labels


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "folder"])
@pytest.mark.parametrize("encoding", list(BOM_ENCODINGS))
def test_files_with_a_byte_order_mark_are_read(tmp_path: Path, fmt: str, encoding: str) -> None:
    """CSV, TSV, JSONL and label-folder files saved as UTF-8 with a BOM or as UTF-16 (LE or BE,
    with its BOM) give the same texts and labels as plain UTF-8: the BOM is not part of the
    first column name or text."""
    path, texts, labels = write_encoded(tmp_path, fmt, lambda t: with_bom(t, encoding))
    ds = data.build_dataset(kw_task(path), 3, "kw")
    got = sorted(zip(ds["text"], ds.features["label"].int2str(ds["label"]), strict=True))
    assert got == sorted(zip(texts, labels, strict=True))


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_table_that_is_not_utf8_names_file_and_encoding(tmp_path: Path, fmt: str) -> None:
    """A table in latin-1 (no BOM) is refused naming the file and UTF-8, not silently read
    with replacement characters."""
    path, _, _ = write_encoded(tmp_path, fmt, lambda t: t.encode("latin-1"))
    with pytest.raises(DataError) as info:
        data.build_dataset(kw_task(path), 3, "kw")
    message = str(info.value)
    assert f"{path} cannot be decoded as utf-8 (no byte-order mark)" in message
    assert "save it as UTF-8" in message


@pytest.mark.parametrize("fmt", ["csv", "folder"])
@pytest.mark.parametrize(
    ("encoding", "broken"),
    [
        ("utf-8-sig", lambda t: codecs.BOM_UTF8 + t.encode("latin-1")),
        ("utf-16-le", lambda t: with_bom(t, "utf-16-le") + b"\x00"),  # odd byte count
        ("utf-16-be", lambda t: with_bom(t, "utf-16-be") + b"\xd8\x00"),  # lone surrogate
    ],
    ids=["utf-8-sig", "utf-16-le", "utf-16-be"],
)
def test_undecodable_file_with_a_bom_names_file_and_encoding(
    tmp_path: Path, fmt: str, encoding: str, broken: Any
) -> None:
    """Bytes that are not valid in the encoding a BOM declares fail with a DataError naming
    the file and that encoding (a label-folder text gets no latin-1 fallback then)."""
    path, _, _ = write_encoded(tmp_path, fmt, broken)
    with pytest.raises(DataError) as info:
        data.build_dataset(kw_task(path), 3, "kw")
    codec = BOM_ENCODINGS[encoding][1]
    file = path if fmt == "csv" else sorted(path.rglob("*.txt"))[0]
    assert f"{file} cannot be decoded as {codec} (its byte-order mark says so)" in str(info.value)


# --------------------------------------------------------------------------------------------
# A model's sample of the prepared splits (models.<m>.max_train / max_val / max_analysis)
# --------------------------------------------------------------------------------------------


def test_cap_split_is_a_stratified_seeded_sample_in_split_order(keyword_csv: Path) -> None:
    """Capping keeps n rows with the class shares of the split, the same rows for the same seed
    (every stage of a model sees the same texts), other rows for another seed, in split order."""
    splits = data.stratified_splits(
        data.build_dataset(kw_task(keyword_csv), 3, "kw"), kw_task(keyword_csv), 0, "kw"
    )
    train = splits["train"]
    capped = data.cap_split(train, 20, seed=0)
    assert len(capped) == 20
    share = lambda ds: np.bincount(ds["label"], minlength=3) / len(ds)  # noqa: E731
    assert np.abs(share(capped) - share(train)).max() <= 0.05
    texts = list(capped["text"])
    assert texts == list(data.cap_split(train, 20, seed=0)["text"])
    assert texts != list(data.cap_split(train, 20, seed=1)["text"])
    order = {t: i for i, t in enumerate(train["text"])}
    assert [order[t] for t in texts] == sorted(order[t] for t in texts)
    assert data.cap_split(train, None, seed=0) is train
    assert data.cap_split(train, 10_000, seed=0) is train


def test_model_splits_apply_the_models_caps(tmp_path: Path, keyword_csv: Path) -> None:
    from layerwise.config import ModelDef

    task = kw_task(keyword_csv)
    splits = data.stratified_splits(data.build_dataset(task, 3, "kw"), task, 0, "kw")
    splits.save_to_disk(str(tmp_path / "kw"))
    model = ModelDef(source="hub:x", layers=[1], max_train=15, max_analysis=12)
    got = data.model_splits(tmp_path / "kw", model, seed=0)
    assert {k: len(v) for k, v in got.items()} == {"train": 15, "val": 20, "analysis": 12}
    uncapped = data.model_splits(tmp_path / "kw", ModelDef(source="hub:x", layers=[1]), seed=0)
    assert {k: len(v) for k, v in uncapped.items()} == {k: len(v) for k, v in splits.items()}
