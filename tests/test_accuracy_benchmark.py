"""Smoke run of benchmarks/accuracy.py on the tiny synthetic data: JSON schema, markdown, plot, docs section."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import TINY_MODEL, load_benchmark, write_binary_folder


@pytest.fixture(scope="module")
def accuracy():
    return load_benchmark("accuracy")


ROW_KEYS = {
    "case",
    "k",
    "seed",
    "method",
    "miou",
    "iou",
    "train_s",
    "wall_s",
    "infer_ms_per_image",
    "steps",
    "supports",
}


def test_accuracy_benchmark_smoke(accuracy, tiny_data, tmp_path: Path) -> None:
    case = tmp_path / "tiny"
    shutil.copytree(tiny_data.binary, case / "support")  # a pool of 4
    shutil.copytree(tiny_data.binary_heldout, case / "heldout")
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    docs.write_text("# Benchmarks\n\nHand-written text.\n")
    out = tmp_path / "out"
    report = accuracy.main([
        "--cases", "--folder", f"tiny={case}", "--shots", "1", "2", "5", "--steps", "2", "--seeds", "0", "1", "--quick",
        "--model-args", json.dumps(TINY_MODEL), "--train-args", '{"episodes_per_step": 1}',
        "--device", "cpu", "--out", str(out), "--write-docs", "--docs", str(docs),
    ])  # fmt: skip

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(report, default=float))
    meta = saved["meta"]
    assert meta["shots"] == [1, 2, 5] and meta["steps"] == 2 and meta["size"] == 64 and meta["seeds"] == [0, 1]
    assert saved["cases"] == [
        {
            "name": "tiny",
            "pool": 4,
            "heldout": 3,
            "classes": ["background", "foreground"],
            "note": saved["cases"][0]["note"],
        }
    ]
    rows = [r for r in saved["results"] if "skipped" not in r]
    assert sorted((r["seed"], r["k"], r["method"]) for r in rows) == sorted(
        (s, k, m)
        for s in (0, 1)
        for k in (1, 2)
        for m in accuracy.METHODS
        if m not in ("distill_teacher", "pool_student")  # only with --methods
    )
    for row in rows:
        extra = set()
        if row["method"] == "finetuned":
            extra = {"lr", "norm_adapt", "miou_by_setting", "iou_by_setting", "stop_reason"}
        extra |= {"stop_reason"} if row["method"] in ("adapted", "student") else set()
        assert set(row) == ROW_KEYS | extra, row
        if row["method"] == "finetuned":  # the baseline is reported at its best setting on the held-out images
            assert row["miou"] == max(row["miou_by_setting"].values())
            assert sorted(row["miou_by_setting"]) == sorted(
                f"lr={lr:g},norm={norm:g}" for lr in accuracy.FINETUNED_LRS for norm in (0.0, 0.5)
            )
            assert row["lr"] in accuracy.FINETUNED_LRS and row["norm_adapt"] in (0.0, 0.5)
            assert sorted(row["iou_by_setting"]) == sorted(row["miou_by_setting"])
            best = [name for name, miou in row["miou_by_setting"].items() if miou == row["miou"]]
            assert row["iou"] in [row["iou_by_setting"][name] for name in best]  # the reported row is a best setting's
        assert 0.0 <= row["miou"] <= 1.0 and row["infer_ms_per_image"] > 0 and len(row["supports"]) == row["k"]
        # --steps binds our methods; the FPN baseline has its own budget, which --quick cuts to a few steps
        assert row["steps"] == {"untuned": 0, "finetuned": accuracy.QUICK_STEPS}.get(row["method"], 2)
    for seed in (0, 1):
        one, two = (next(r["supports"] for r in rows if r["k"] == k and r["seed"] == seed) for k in (1, 2))
        assert two[:1] == one  # nested support sets
    assert [r for r in saved["results"] if "skipped" in r] == [
        {"case": "tiny", "k": 5, "seed": s, "skipped": "the pool has 4 images"} for s in (0, 1)
    ]

    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    assert "| 5 | skipped: the pool has 4 images |" in table and "fine-tuned FPN" in table
    assert "seeds 0, 1 (every cell is their mean)" in table and "classes < 0.1" in table
    # a cell one seed could not train is the other seeds' mean, the skipped seed named below the table
    partly = {**saved, "results": [r for r in saved["results"] if not (r["k"] == 2 and r["seed"] == 1)]}
    partly["results"].append({"case": "tiny", "k": 2, "seed": 1, "skipped": "the 2 supports show no pixel of b"})
    one_seed = accuracy.markdown(partly, "x.png")
    student_k2 = next(r["miou"] for r in rows if (r["k"], r["seed"], r["method"]) == (2, 0, "student"))
    assert "| 2 | " in one_seed and "| 2 | skipped" not in one_seed and f"{student_k2:.3f}" in one_seed
    assert "K = 2, seed 1: skipped (the 2 supports show no pixel of b); the row is the mean of the other seeds." in (
        one_seed
    )
    # a report merged from runs made side by side is the same tables
    merged = accuracy.merge_reports([saved])
    assert accuracy.markdown(merged, "x.png") == accuracy.markdown(saved, "x.png")
    assert not (out / "work").exists()  # runs and copied folders are cleaned up
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written text.\n")
    assert text.count(accuracy.BEGIN) == 1 and text.count(accuracy.END) == 1 and "](accuracy_vs_shots.png)" in text
    assert (docs.parent / "accuracy_vs_shots.png").is_file()


def test_pool_student_trains_on_the_unused_supports_and_the_pool_split(accuracy, tiny_data, tmp_path: Path) -> None:
    case = tmp_path / "tiny"
    shutil.copytree(tiny_data.binary, case / "support")  # a pool of 4
    shutil.copytree(tiny_data.binary_heldout, case / "heldout")
    shutil.copytree(tiny_data.multi_heldout / "images", case / "pool" / "images")  # 3 unlabeled images
    report = accuracy.main([
        "--cases", "--folder", f"tiny={case}", "--shots", "2", "--steps", "1", "--seeds", "0", "--quick",
        "--methods", "distill", "pool", "--model-args", json.dumps(TINY_MODEL), "--device", "cpu",
        "--train-args", '{"pool_min_iou": 0}',  # the 1-step teacher is trusted with the pool
        "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    rows = {r["method"]: r for r in report["results"]}
    assert set(rows) == {"student", "pool_student"}
    assert rows["pool_student"]["pool"]["images"] == 2 + 3  # the 2 supports K = 2 leaves, the 3 pool images
    assert rows["pool_student"]["steps"] == 2 * rows["student"]["steps"]
    assert "student + unlabeled pool" in (tmp_path / "out" / "results.md").read_text()


def test_distill_teacher_is_opt_in_and_needs_distill(accuracy, capsys) -> None:
    assert "distill_teacher" not in accuracy.parse_args([]).methods
    assert "distill_teacher" in accuracy.parse_args(["--methods", "distill", "distill_teacher"]).methods
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--methods", "adapt", "distill_teacher"])
    assert "needs distill" in capsys.readouterr().err


def test_cases_are_measured_once_each(accuracy, capsys) -> None:
    """A case named twice was measured twice into one cell; a --folder named like a built-in case shared its work
    folder (one was evaluated on the other's held-out images)."""
    assert accuracy.parse_args(["--cases", "nuclei", "brain", "nuclei"]).cases == ["nuclei", "brain"]
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--cases", "nuclei", "--folder", "nuclei=/tmp/x"])
    assert "names a case already measured" in capsys.readouterr().err


def test_merge_unites_cases_and_seeds_and_refuses_other_settings(accuracy) -> None:
    def report(case, seed, steps=5):
        meta = {
            "size": 64,
            "backbone": "b",
            "steps": steps,
            "model_args": {},
            "train_args": {},
            "methods": ["distill"],
            "shots": [2],
            "seeds": [seed],
            "total_s": 10.0 + seed,
            "command": f"run {case} {seed}",
        }
        row = {
            "case": case,
            "k": 2,
            "seed": seed,
            "method": "student",
            "miou": 0.5,
            "iou": {"background": 0.9, "a": 0.05, "b": 0.95},
        }
        return {"meta": meta, "cases": [{"name": case}], "results": [row]}

    merged = accuracy.merge_reports([report("x", 0), report("x", 1), report("y", 0)])
    assert [c["name"] for c in merged["cases"]] == ["x", "y"] and merged["meta"]["seeds"] == [0, 1]
    assert len(merged["results"]) == 3 and merged["meta"]["total_s"] == 11.0
    assert accuracy.low_classes(merged["results"][0]) == 1  # class a below 0.1, background not counted
    with pytest.raises(SystemExit, match="different steps"):
        accuracy.merge_reports([report("x", 0), report("x", 1, steps=7)])
    # arguments that only name a default train the same recipe; another value does not
    named = report("x", 1)
    named["meta"]["train_args"] = {"crop_centre": "class"}
    assert accuracy.merge_reports([report("x", 0), named])["meta"]["seeds"] == [0, 1]
    named["meta"]["train_args"] = {"crop_centre": "uniform"}
    with pytest.raises(SystemExit, match="different train_args"):
        accuracy.merge_reports([report("x", 0), named])
    named["meta"]["train_args"] = {"no_such_field": 1}  # a run of a version with a field this one dropped
    with pytest.raises(SystemExit, match="train_args .* this code does not take"):
        accuracy.merge_reports([report("x", 0), named])
    # other methods of the same cells unite; one cell measured twice is refused; repeated skip rows are kept once
    other = report("x", 0)
    other["meta"]["methods"] = ["finetuned"]
    other["results"][0]["method"] = "finetuned"
    skipped = {"case": "x", "k": 1, "seed": 0, "skipped": "the pool has 0 images"}
    other["results"].append(skipped)
    first = report("x", 0)
    first["results"].append(dict(skipped))
    merged = accuracy.merge_reports([first, other])
    assert merged["meta"]["methods"] == ["distill", "finetuned"]
    assert [r.get("method") for r in merged["results"]] == ["student", None, "finetuned"]
    commands = [report("x", 0), report("x", 1)]
    commands[0]["meta"]["command"] = "python benchmarks/accuracy.py --cases x --out /tmp/a --keep-runs"
    commands[1]["meta"]["command"] = "python benchmarks/accuracy.py --out=/tmp/b --cases x"
    merged = accuracy.merge_reports(commands)  # where a run wrote its files is no part of how to reproduce it
    assert merged["meta"]["command"] == "python benchmarks/accuracy.py --cases x"
    with pytest.raises(SystemExit, match="student on x K=2 seed 0"):
        accuracy.merge_reports([report("x", 0), report("x", 0)])
    # another machine, code version or held-out set is refused; so are methods measured on other seeds of a cell
    elsewhere = report("x", 1)
    elsewhere["meta"]["device"] = "cuda (H100)"
    with pytest.raises(SystemExit, match="different device"):
        accuracy.merge_reports([report("x", 0), elsewhere])
    newer = report("x", 1)
    newer["meta"]["versions"] = {"fsdistill": "9.9"}
    with pytest.raises(SystemExit, match="different fsdistill versions"):
        accuracy.merge_reports([report("x", 0), newer])
    fewer = report("x", 1)
    fewer["cases"][0]["heldout"] = 4
    with pytest.raises(SystemExit, match="x on other data: None / 4 held-out"):
        accuracy.merge_reports([report("x", 0), fewer])
    with pytest.raises(
        SystemExit, match=r"x K=2 has methods measured on other seeds \(student \[0, 1\]; finetuned \[0\]"
    ):
        accuracy.merge_reports([report("x", 0), report("x", 1), other])


def test_docs_section_is_replaced_in_place(accuracy, tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# B\n\nbefore\n\n{accuracy.BEGIN}\nold\n{accuracy.END}\n\nafter\n")
    accuracy.write_docs_section(docs, "new table\n")
    assert docs.read_text() == f"# B\n\nbefore\n\n{accuracy.BEGIN}\nnew table\n{accuracy.END}\n\nafter\n"
    accuracy.write_docs_section(docs, "newer\n")
    assert docs.read_text() == f"# B\n\nbefore\n\n{accuracy.BEGIN}\nnewer\n{accuracy.END}\n\nafter\n"


def test_suggest_loop_benchmark_smoke(tiny_data, tmp_path: Path) -> None:
    loop = load_benchmark("suggest_loop")
    case = tmp_path / "tiny"
    shutil.copytree(tiny_data.binary, case / "support")  # a pool of 4
    shutil.copytree(tiny_data.binary_heldout, case / "heldout")
    write_binary_folder(case / "pool", ["p0", "p1"], seed=7)  # the unlabeled split, with its true masks
    out = tmp_path / "out"
    report = loop.main([
        "--cases", "--folder", f"tiny={case}", "--shots", "1", "--seeds", "0", "--add", "2", "--steps", "1",
        "--model-args", json.dumps(TINY_MODEL), "--device", "cpu", "--out", str(out),
    ])  # fmt: skip
    (row,) = report["results"]
    assert row["candidates"] == 3 + 2  # the 3 supports K = 1 leaves, the 2 pool images
    assert {"base", "suggested", "random"} <= set(row)
    assert len(row["suggested"]["added"]) == len(row["random"]["added"]) == 2
    assert all(0.0 <= row[v]["miou"] <= 1.0 for v in ("base", "suggested", "random"))
    table = (out / "results.md").read_text()
    assert "+ 2 suggested" in table and "| tiny | 1 |" in table
    assert json.loads((out / "results.json").read_text())["meta"]["add"] == 2


def test_pool_cost_benchmark_smoke(tiny_data, tmp_path: Path) -> None:
    cost = load_benchmark("pool_cost")
    case = tmp_path / "tiny"
    shutil.copytree(tiny_data.binary, case / "support")  # a pool of 4 supports
    shutil.copytree(tiny_data.binary_heldout, case / "heldout")
    write_binary_folder(case / "pool", ["p0"], seed=7)
    out = tmp_path / "out"
    report = cost.main([
        "--folder", str(case), "--shots", "2", "--pool-size", "5", "--steps", "1",
        "--model-args", json.dumps(TINY_MODEL), "--device", "cpu", "--out", str(out),
    ])  # fmt: skip
    # the 2 supports K = 2 leaves and the pool image, then their horizontal and vertical mirrors, up to 5
    assert report["pool_images"] == 5 and report["case"] == "tiny"
    runs = report["runs"]
    assert runs["without"]["steps"] == 1 and "pool" not in runs["without"]
    assert runs["with"]["pool"]["label_shots"] == 3 and runs["with"]["pool"]["images"] == 5
    assert report["wall_ratio"] == round(runs["with"]["wall_s"] / runs["without"]["wall_s"], 2)
    assert "With / without" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["shots"] == 2


def test_grow_subset_folder_keeps_the_first_classes_and_images(tmp_path) -> None:
    """benchmarks/grow.py's base folders: the first C classes (the others become background), the first K images."""
    import numpy as np
    from PIL import Image

    from fsdistill.data.discover import discover

    from helpers import write_multiclass_folder

    grow = load_benchmark("grow")
    src = write_multiclass_folder(tmp_path / "src", [f"i{k}" for k in range(5)], ["red", "green", "blue"])
    base = grow.subset_folder(src, tmp_path / "base", classes=2, images=3)
    index = discover(base)
    assert index.class_names == ["background", "red", "green"] and len(index) == 3
    source = discover(src)
    for i, sample in enumerate(index.samples):
        assert sample.image_path.name == source.samples[i].image_path.name
        mask, original = (
            np.asarray(Image.open(base / "masks" / f"{sample.image_path.stem}.png")),
            source.load_pair(i)[1],
        )
        assert set(np.unique(mask)) <= {0, 1, 2}
        assert np.array_equal(mask, np.where(original > 2, 0, original))


def test_grow_reuses_a_base_run_of_the_same_folder_only(tiny_multi_run, tmp_path) -> None:
    """--reuse-base kept a base run of other classes (a call with another --base): its table counted a class new
    to the continued run among the old ones, exit 0."""
    import shutil

    import pytest

    from fsdistill.checkpoint import resolve_model_dir
    from fsdistill.models.build import load_model

    grow = load_benchmark("grow")
    run = tmp_path / "base_0"
    shutil.copytree(tiny_multi_run.run_dir, run)
    support = Path(load_model(resolve_model_dir(run)).config["support"]["root"])
    assert grow._same_base(run, support)
    assert not grow._same_base(tmp_path / "nothing_there", support)
    other = grow.subset_folder(support, tmp_path / "other", classes=2)
    with pytest.raises(SystemExit, match="--reuse-base: .* was distilled from another support folder"):
        grow._same_base(run, other)


def test_a_support_draw_that_misses_a_class_is_a_skip_reason(tmp_path) -> None:
    """suggest_loop trained on a draw whose supports miss a class: distill refused it with a traceback and every
    cell measured before was lost. accuracy.unusable_supports says why (both benchmarks skip such a cell)."""
    from types import SimpleNamespace

    from helpers import write_multiclass_folder

    accuracy = load_benchmark("accuracy")
    case = SimpleNamespace(class_names=["background", "red", "green", "blue"])
    one = write_multiclass_folder(tmp_path / "one", ["i0"], ["red", "green", "blue"])  # shows red and green
    assert accuracy.unusable_supports(case, one) == "the 1 supports show no pixel of blue"
    every = write_multiclass_folder(tmp_path / "every", ["i0", "i1"], ["red", "green", "blue"])
    assert accuracy.unusable_supports(case, every) is None
