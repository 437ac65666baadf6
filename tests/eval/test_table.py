"""The metric table files: columns, Markdown, and all-or-nothing writes."""

import os

import pandas as pd
import pytest

from gemmascope.eval import table


def _row(sae="resid_post/layer_0/width_64/jumprelu_lambda_1e-03", l0=10.0, **overrides):
    row = {column: 0.5 for column in table.METRIC_COLUMNS}
    row.update(
        sae=sae,
        model="tiny",
        site="resid_post/0",
        transcoder=False,
        target_site="",
        kind="resid_post",
        layer=0,
        d_in=16,
        width=64,
        architecture="jumprelu",
        source="trained",
        sweep_field="sparsity_coeff",
        sweep_value=1e-3,
        tokens_trained=4096,
        eval_tokens=100,
        l0=l0,
    )
    row.update(overrides)
    return row


def test_build_table_sorts_and_types_rows():
    released = _row(
        sae="resid_post/layer_0/width_64/gemmascope_average_l0_5",
        l0=5.0,
        architecture="gemmascope",
        source="released",
        sweep_field=None,
        sweep_value=None,
        tokens_trained=None,
    )
    frame = table.build_table([_row(l0=20.0), released, _row(sae="b", l0=3.0)])
    assert list(frame.columns) == list(table.COLUMNS)
    assert list(frame["l0"]) == [5.0, 3.0, 20.0]  # by architecture, then L0
    assert frame["sweep_value"].dtype == "float64" and pd.isna(frame["sweep_value"].iloc[0])
    markdown = table.to_markdown(frame).splitlines()
    assert markdown[0] == "| " + " | ".join(table.COLUMNS) + " |"
    assert "| gemmascope | released |  | " in markdown[2]  # missing values print empty


def test_missing_column_is_a_clear_error():
    row = _row()
    del row["fvu"]
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['fvu'\]"):
        table.build_table([row])


def test_a_failed_write_leaves_the_previous_table_whole(tmp_path, monkeypatch):
    first = table.build_table([_row(l0=1.0)])
    table.write_table(first, str(tmp_path))
    before = {name: (tmp_path / name).read_bytes() for name in table.TABLE_FILES}

    def broken_markdown(frame):
        raise OSError("disk full")

    monkeypatch.setattr(table, "to_markdown", broken_markdown)
    with pytest.raises(OSError, match="disk full"):
        table.write_table(table.build_table([_row(l0=2.0), _row(sae="x")]), str(tmp_path))
    assert {name: (tmp_path / name).read_bytes() for name in table.TABLE_FILES} == before
    assert sorted(os.listdir(tmp_path)) == sorted(table.TABLE_FILES)  # no temp files left
