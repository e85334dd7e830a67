from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vistrieve.evals.report import EvalReport, MethodResult, Section
from vistrieve.utils.io import FORMAT_VERSION


def _report() -> EvalReport:
    base = MethodResult(
        metrics={
            "f_text_to_image_R@1": 0.5,
            "f_text_to_image_R@5": 0.8125,
            "f_image_to_text_R@1": 0.6,
            "f_text_to_image_MRR@10": 0.61,
            "cir_R@1": 0.25,
            "cir_R_subset@1": 0.75,
            "chat_hits@10_round0": 0.1,
            "chat_hits@10_round1": 0.3,
        },
        cost={"dense.encoder.text_passes": 5000.0, "dense.encoder.image_passes": 1000.0},
        cost_by_evaluator={"RetrievalEvaluator[f]": {"dense.encoder.text_passes": 5000.0}},
        seconds={"RetrievalEvaluator[f]": 1.25, "DialogEvaluator[chat]": 0.5},
        curves={"chat_hits@10": [0.1, 0.3]},
    )
    rerank = MethodResult(
        metrics={"f_text_to_image_R@1": 0.625, "f_text_to_image_R@5": 0.875},
        cost={"dense.encoder.text_passes": 5000.0, "qformer.pairs_evaluated": 320000.0},
        seconds={"RetrievalEvaluator[f]": 30.0},
        notes=["R@K cannot exceed the number of beams (10)"],
        errors={"DialogEvaluator[chat]": "RuntimeError: out of memory"},
    )
    return EvalReport(
        title="flickr test",
        methods={"dual encoder": base, "+ qformer": rerank},
        sections={
            "RetrievalEvaluator[f]": Section(
                "RetrievalEvaluator",
                "f",
                "f_text_to_image_R@1",
                [
                    "f_text_to_image_R@1",
                    "f_text_to_image_R@5",
                    "f_text_to_image_MRR@10",
                    "f_image_to_text_R@1",
                ],
            ),
            "DialogEvaluator[chat]": Section(
                "DialogEvaluator",
                "chat",
                "chat_hits@10_round1",
                ["chat_hits@10_round0", "chat_hits@10_round1"],
            ),
        },
        info={"dataset": "flickr", "split": "test"},
    )


def test_json_round_trip(tmp_path: Path) -> None:
    report = _report()
    path = report.to_json(tmp_path / "sub" / "report.json")
    assert path == tmp_path / "sub" / "report.json"
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary left
    data = json.loads(path.read_text())
    assert data["format_version"] == FORMAT_VERSION
    assert data["methods"]["+ qformer"]["errors"] == {
        "DialogEvaluator[chat]": "RuntimeError: out of memory"
    }
    back = EvalReport.from_json(path)
    assert back == report
    assert back.methods["dual encoder"].wall_time == pytest.approx(1.75)
    assert back.methods["+ qformer"].failed and not back.methods["dual encoder"].failed


def test_from_dict_rejects_unknown_and_newer() -> None:
    data = _report().to_dict()
    data["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        EvalReport.from_dict(data)
    with pytest.raises(ValueError, match="unknown MethodResult keys"):
        MethodResult.from_dict({"metrics": {}, "recall": 1})


def test_markdown_tables() -> None:
    md = _report().to_markdown()
    lines = md.splitlines()
    assert lines[0] == "# flickr test"
    assert "- dataset: flickr" in lines
    # One table per evaluator: prefix stated once, not repeated in every column.
    i = lines.index("## RetrievalEvaluator[f]")
    assert lines[i + 2] == (
        "| method | text_to_image_R@1 | text_to_image_R@5 | text_to_image_MRR@10 "
        "| image_to_text_R@1 |"
    )
    assert lines[i + 3] == "|---|---:|---:|---:|---:|"
    assert lines[i + 4] == "| dual encoder | 50.0 | 81.2 | 61.0 | 60.0 |"
    assert lines[i + 5] == "| + qformer | 62.5 | 87.5 |  |  |"
    assert "Keys are prefixed `f_`. Primary metric: `f_text_to_image_R@1`." in lines[i + 7]
    # Metrics no section claims go into a last table with their full keys.
    j = lines.index("## other metrics")
    assert lines[j + 2] == "| method | cir_R@1 | cir_R_subset@1 |"
    assert lines[j + 4] == "| dual encoder | 25.0 | 75.0 |"
    # Cost beside the metrics: wall time and every counter.
    c = lines.index("## cost")
    assert lines[c + 2] == (
        "| method | wall time (s) | dense.encoder.text_passes | dense.encoder.image_passes "
        "| qformer.pairs_evaluated |"
    )
    assert lines[c + 4] == "| dual encoder | 1.75 | 5,000 | 1,000 |  |"
    assert lines[c + 5] == "| + qformer | 30.00 | 5,000 |  | 320,000 |"
    assert "| dual encoder | chat_hits@10 | 10.0 | 30.0 |" in lines
    assert "- + qformer: R@K cannot exceed the number of beams (10)" in lines
    assert "- + qformer FAILED in DialogEvaluator[chat]: RuntimeError: out of memory" in lines


def test_markdown_without_sections() -> None:
    r = EvalReport("t", {"m": MethodResult(metrics={"R@1": 1 / 3}, cost={"x.seconds": 0.125})})
    md = r.to_markdown()
    assert "## metrics" in md and "| m | 33.3 |" in md
    assert "| m | 0.00 | 0.12 |" in md  # non-integral counters keep two decimals
    bare = EvalReport("t", {"m": MethodResult(metrics={"R@1": 1.0})}).to_markdown().splitlines()
    c = bare.index("## cost")
    assert bare[c + 2 : c + 5] == ["| method | wall time (s) |", "|---|---:|", "| m | 0.00 |"]
    assert not any("Counters are" in line for line in bare)


def _check_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_plots_are_valid_pngs(tmp_path: Path) -> None:
    files = _report().save_plots(tmp_path / "plots")
    names = sorted(f.name for f in files)
    assert names == [
        "dialog_chat_hits_10.png",
        "recall_cir.png",
        "recall_f_image_to_text.png",
        "recall_f_text_to_image.png",
    ]
    for f in files:
        width, height = _check_png(f)
        assert width > 100 and height > 100
    # R_subset and MRR keys are not recall bars.
    assert not any("subset" in n or "MRR" in n for n in names)
    assert (
        EvalReport("empty", {"m": MethodResult(metrics={"mAP@5": 0.1})}).save_plots(
            tmp_path / "none"
        )
        == []
    )


def test_save_writes_everything(tmp_path: Path) -> None:
    report = _report()
    files = report.save(tmp_path / "out")
    assert files[:2] == [tmp_path / "out" / "report.json", tmp_path / "out" / "report.md"]
    assert all(f.is_file() for f in files)
    assert (tmp_path / "out" / "report.md").read_text() == report.to_markdown()
    assert EvalReport.from_json(tmp_path / "out" / "report.json") == report
    assert len([f for f in files if f.suffix == ".png"]) == 4


def test_import_has_no_plotting_side_effect() -> None:
    code = "import sys, vistrieve.evals.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_publish_table_replaces_only_its_own_block(tmp_path) -> None:
    from vistrieve.evals.report import publish_table

    doc = tmp_path / "bench.md"
    doc.write_text("# Results\n\nintro\n", encoding="utf-8")
    assert publish_table(doc, "a", "| x |\n|---|\n| 1 |", command="run a") is False
    assert publish_table(doc, "b", "| y |\n|---|\n| 2 |", command="run b") is False
    assert publish_table(doc, "a", "| x |\n|---|\n| 3 |", command="run a") is True
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nintro\n")
    assert "| 3 |" in text and "| 1 |" not in text and "| 2 |" in text
    assert text.count("<!-- experiment a:") == 1 and text.count("<!-- /experiment a -->") == 1
    assert "written by `run a`" in text
    # the text after a block survives a replacement
    assert text.index("| 3 |") < text.index("| 2 |")


def test_publish_table_refuses_a_bad_key_or_a_broken_block(tmp_path) -> None:
    from vistrieve.evals.report import publish_table

    doc = tmp_path / "bench.md"
    with pytest.raises(ValueError, match="experiment key"):
        publish_table(doc, "a b", "t", command="c")
    doc.write_text("<!-- experiment a: written by `c`; x -->\nold\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no '<!-- /experiment a -->'"):
        publish_table(doc, "a", "new", command="c")
    assert doc.read_text(encoding="utf-8").endswith("old\n")  # untouched
