"""Text from outside (file names, manifest keys, generator names) in the files the toolkit
writes: no CSV cell a spreadsheet would execute, no raw HTML or link in Markdown — checked on
predict's CSV, evaluate's metrics.csv / scores.csv / metrics.md, the protocols' tables and the
report, with names made to attack them."""
from __future__ import annotations

import csv
import re

import pandas as pd
import pytest

from helpers.hostile import deadline_fixture
from clipdetect.cli.main import main
from clipdetect.core.escape import FORMULA_STARTS, csv_cell, csv_safe, md_code, md_text
from clipdetect.core.tables import to_markdown
from helpers.images import TINY, make_image

_deadline = deadline_fixture(300)
FORMULAS = ['=HYPERLINK("https:evil","x")', "+1+2", "-3+cmd|' /C calc'!A0", "@SUM(1)", "\t=1", "\r=1",
            " =1", "\uff1d1", "=1"]
HTML = ["<img src=x onerror=alert(1)>", "[a](javascript:alert(1))", "<javascript:alert(1)>", "a|b", "`x`",
        "*bold* _it_", "&lt;"]


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _executable_cells(path) -> list:
    with open(path, newline="") as f:
        return [c for row in csv.reader(f) for c in row
                if (c[:1] in FORMULA_STARTS or c.lstrip()[:1] in FORMULA_STARTS) and not _number(c)]


def _raw_markup(text: str) -> list:
    """HTML tags, or links/images not escaped, in Markdown text outside code spans (where
    CommonMark shows them as text)."""
    text = re.sub(r"(`+)(.+?)(?<!`)\1(?!`)", "", text)
    return re.findall(r"<[a-zA-Z/!]|(?<!\\)\]\((?:javascript|data|https?):", text)


@pytest.mark.parametrize("value", FORMULAS)
def test_formula_cells_are_neutralised_and_numbers_kept(value):
    assert csv_cell(value) == "'" + value
    assert csv_cell(-1.5) == -1.5 and csv_cell("real/00.png") == "real/00.png" and csv_cell("") == ""
    df = csv_safe(pd.DataFrame({value: [value, "ok"], "score": [-0.5, 2.0]}))
    assert list(df.columns) == ["'" + value, "score"] and df.iloc[0, 0] == "'" + value
    assert df["score"].tolist() == [-0.5, 2.0]


@pytest.mark.parametrize("value", HTML)
def test_markdown_text_and_code_render_as_themselves(value):
    cell = md_text(value)
    assert not _raw_markup(cell) and "|" not in cell.replace(r"\|", "")
    code = md_code(value)
    fence = re.match(r"`+", code).group()
    assert code.endswith(fence) and fence not in code[len(fence):-len(fence)].strip()
    table = to_markdown(pd.DataFrame({"generator": [value], "auc": [0.5]}))
    assert table.splitlines()[2].count(" | ") == 1  # one cell boundary: the name did not add a column
    assert not _raw_markup(table)


@pytest.fixture(scope="module")
def hostile_names(tmp_path_factory):
    """A manifest whose keys and generator names attack CSV and Markdown, its cache, a detector."""
    root = tmp_path_factory.mktemp("inj")
    (root / "imgs").mkdir()
    rows = []
    for i in range(16):
        label = i % 2
        name = (FORMULAS[i % len(FORMULAS)] + f"-{i}.png").replace("\r", "r").replace("/", "_")
        make_image(i, size=(32, 32), fake=bool(label)).save(root / "imgs" / f"{i}.png")
        rows.append({"path": str(root / "imgs" / f"{i}.png"), "label": label, "key": name,
                     "generator": "real" if label == 0 else "=CMD()" + HTML[i % len(HTML)]})
    manifest = root / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    assert main(["extract", str(manifest), "--out", str(root / "cache"), "--backbone", TINY, "--workers", "0",
                 "--no-progress"]) == 0
    assert main(["train", str(root / "cache"), "--out", str(root / "det"), "--epochs", "1", "--head", "linear",
                 "--no-sam", "--batch-size", "8", "--val-fraction", "0", "--test-fraction", "0",
                 "--no-progress"]) == 0
    return root, manifest


def test_predict_csv_has_no_executable_cell(hostile_names, tmp_path):
    root, manifest = hostile_names
    out = tmp_path / "p.csv"
    assert main(["predict", str(root / "det"), str(manifest), "--out", str(out), "--workers", "0",
                 "--no-progress"]) == 0
    assert _executable_cells(out) == []
    keys = pd.read_csv(out)["key"]
    assert keys.str.startswith("'=").sum() >= 2  # neutralised, not dropped


def test_evaluate_outputs_have_no_executable_cell_and_no_markup(hostile_names, tmp_path):
    root, _ = hostile_names
    out = tmp_path / "eval"
    assert main(["evaluate", str(root / "det"), str(root / "cache"), "--split", "all", "--n-boot", "0",
                 "--baseline", "none", "--out", str(out), "--save-scores"]) == 0
    for name in ("metrics.csv", "scores.csv"):
        assert _executable_cells(out / name) == [], name
    md = (out / "metrics.md").read_text()
    assert _raw_markup(md) == [] and "&lt;img" in md and r"\[a\]" in md


def test_save_table_escapes_titles_cells_and_csv(tmp_path):
    from clipdetect.eval.protocols import save_table

    df = pd.DataFrame({"generator": ["=1+1", "<b>x</b>"], "auc": [0.5, 0.6]})
    paths = save_table(df, tmp_path, "t", title=f"on {md_code('=x`<b>')}")
    assert _executable_cells(paths[1]) == []
    assert _raw_markup(paths[2].read_text()) == []


def test_a_multi_generator_report_has_no_markup(tmp_path):
    """Generator names that attack Markdown, through the whole report."""
    from helpers.synthetic import write_multi_generator_cache

    cache = write_multi_generator_cache(tmp_path / "cache", generators=("<b>a</b>", "[l](javascript:x)", "=c|d"))
    assert main(["train", str(cache.root), "--out", str(tmp_path / "det"), "--epochs", "2", "--head", "linear",
                 "--no-sam", "--no-progress"]) == 0
    assert main(["evaluate", str(tmp_path / "det"), str(cache.root), "--n-boot", "0", "--baseline", "none",
                 "--out", str(tmp_path / "eval")]) == 0
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert _raw_markup(md) == [] and "&lt;b&gt;a&lt;/b&gt;" in md
    assert _executable_cells(tmp_path / "eval" / "metrics.csv") == []
