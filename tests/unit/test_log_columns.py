"""Rows of the pipeline log as columns (sdk/log_columns.py): the column groups Wallaroo's
``dataset`` selects, schema changes across a replace, newest first, the bounded heap."""

from __future__ import annotations

import json
import random

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.log_columns import (
    Newest,
    TableBuilder,
    batch_table,
    concat,
    order_of,
    selection,
)
from edgepub.log_print import row_object, row_text
from edgepub.shared.errors import InvalidRequestError
from edgepub.shared.log_lines import RowLine

T0 = 1_700_000_000_000


def row(seq: int, t: int, *, version: str = "v1", **out: object) -> RowLine:
    return RowLine(
        seq=seq,
        time=t,
        pipeline="p",
        pipeline_version=version,
        in_={"tensor": [float(seq), 1.0]},
        out=dict(out) or {"variable": [float(seq)]},
        elapsed_ns=(100, 200),
        models=(("m1", "1", "aa" * 32), ("m2", "3", "bb" * 32)),
    )


def build(rows: list[tuple[RowLine, str]], batch: int = 3, **sel: object) -> pa.Table:
    b = TableBuilder(selection(**sel), batch_rows=batch)  # type: ignore[arg-type]
    for i, (r, p) in enumerate(rows):
        b.add(r, p, order_of(1, i))
    return b.finish()


def test_default_columns_are_time_in_out_anomaly_newest_first() -> None:
    t = build([(row(i, T0 + i), "edge-a") for i in range(7)])
    assert t.column_names == ["time", "in.tensor", "out.variable", "anomaly.count"]
    assert t.column("out.variable").to_pylist()[0] == [6.0]
    assert t.schema.field("time").type == pa.timestamp("ms", tz="UTC")
    df = t.to_pandas()
    assert str(df["time"].dtype) == "datetime64[ms, UTC]"
    assert df["time"].iloc[0] == pd.Timestamp(T0 + 6, unit="ms", tz="UTC")


def test_metadata_only_when_asked() -> None:
    t = build([(row(1, T0), "edge-a")], dataset=["time", "out", "metadata"])
    assert t.column_names == [
        "time",
        "out.variable",
        "metadata.last_model",
        "metadata.pipeline_version",
        "metadata.elapsed",
        "metadata.dropped",
        "metadata.partition",
    ]
    got = t.to_pylist()[0]
    assert json.loads(got["metadata.last_model"]) == {"model_name": "m2", "model_sha": "bb" * 32}
    assert got["metadata.elapsed"] == [100, 200]
    assert got["metadata.dropped"] == []
    assert got["metadata.partition"] == "edge-a"
    assert got["metadata.pipeline_version"] == "v1"


def test_dataset_names_columns_excludes_and_separator() -> None:
    rows = [(row(1, T0), "e")]
    assert build(rows, dataset=["time", "out.variable"]).column_names == ["time", "out.variable"]
    assert build(rows, dataset="*", dataset_exclude=["in"]).column_names == [
        "time",
        "out.variable",
        "anomaly.count",
    ]
    assert build(rows, dataset=["metadata.partition"]).column_names == ["metadata.partition"]
    assert build(rows, dataset_separator="_").column_names == [
        "time",
        "in_tensor",
        "out_variable",
        "anomaly_count",
    ]


@pytest.mark.parametrize(
    "kwargs", [{"dataset": [3]}, {"dataset_exclude": [""]}, {"dataset_separator": ""}]
)
def test_bad_dataset_arguments_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        selection(**kwargs)  # type: ignore[arg-type]


def test_schema_change_after_a_replace_reads_back_with_nulls() -> None:
    before = [(row(i, T0 + i, variable=[1.0]), "e") for i in range(4)]
    after = [(row(i, T0 + i, version="v2", price=[2.0], label="x"), "e") for i in range(4, 8)]
    t = build(before + after, batch=3, dataset=["*", "metadata"])  # batches straddle it
    got = t.to_pylist()
    assert [r["metadata.pipeline_version"] for r in got] == ["v2"] * 4 + ["v1"] * 4
    assert got[0]["out.variable"] is None and got[0]["out.price"] == [2.0]
    assert got[-1]["out.variable"] == [1.0] and got[-1]["out.price"] is None
    assert got[-1]["out.label"] is None


def test_conflicting_types_become_json_text_not_an_error() -> None:
    a = batch_table([(row(1, T0, v=[1.0, 2.0]), "e", 1)], selection())
    b = batch_table([(row(2, T0 + 1, v="text"), "e", 2)], selection())
    t = concat([a, b])
    assert sorted(t.column("out.v").to_pylist()) == ['"text"', "[1.0, 2.0]"]  # each as JSON
    mixed = batch_table(
        [(row(1, T0, v=[1.0]), "e", 1), (row(2, T0, v={"k": 1}), "e", 2)], selection()
    )
    assert mixed.column("out.v").type == pa.string()


def test_equal_times_keep_stream_order_newest_first() -> None:
    t = build([(row(i, T0), "e") for i in range(5)], batch=2)
    assert [v[0] for v in t.column("in.tensor").to_pylist()] == [4.0, 3.0, 2.0, 1.0, 0.0]


def test_empty_read_has_the_time_column() -> None:
    t = build([])
    assert t.num_rows == 0 and t.column_names == ["time"]
    assert t.to_pandas().empty


@given(st.lists(st.integers(0, 50), max_size=60), st.integers(1, 10))
def test_newest_holds_exactly_the_newest(times: list[int], limit: int) -> None:
    keep = Newest(limit)
    for i, t in enumerate(times):
        keep.add(row(i, t), "e", order_of(1, i))
    assert keep.seen == len(times)
    want = sorted(((t, i) for i, t in enumerate(times)), reverse=True)[:limit]
    held = keep.finish().to_pylist()  # in.tensor[0] is the row's seq
    got = sorted(
        ((round(r["time"].timestamp() * 1000), r["in.tensor"][0]) for r in held), reverse=True
    )
    assert got == want


def test_newest_kth_time_once_full() -> None:
    keep = Newest(3)
    rng = random.Random(7)
    for i in range(2):
        keep.add(row(i, rng.randrange(100)), "e", i)
    assert keep.kth_newest_ms() is None
    for i in range(2, 20):
        keep.add(row(i, T0 + i), "e", i)
    assert keep.kth_newest_ms() == T0 + 17


def test_cli_row_shapes() -> None:
    r = row(3, T0, variable=[1.5])
    assert row_text(r, "edge-a") == "2023-11-14T22:13:20+00:00 edge-a variable=[1.5]"
    obj = row_object(r, "edge-a")
    assert obj["partition"] == "edge-a" and obj["in"] == {"tensor": [3.0, 1.0]}
    assert obj["out"] == {"variable": [1.5]} and obj["seq"] == 3
