"""End to end: two short training runs (LFP and surrogate) on the embedded digits data, then
``spikelfp report`` through the console entry point: report.md, a self-contained report.html,
every PNG the markdown names, and the JSON."""

import json
import re

import pytest

from spikelfp.cli import main
from spikelfp.train.loop import train

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    base = {"epochs": 1, "limit": 200, "out": str(root), "progress": "off", "device": "cpu",
            "log_updates_every": 3, "steps": 10}
    lfp = train({**base, "run_name": "lfp"}, echo=lambda s: None)
    sg = train({**base, "run_name": "sg", "trainer": "surrogate", "lr": 5e-4}, echo=lambda s: None)
    return lfp["run_dir"], sg["run_dir"], lfp["metrics"]


def test_report_end_to_end(runs, tmp_path):
    lfp_dir, sg_dir, _ = runs
    out, js = tmp_path / "report", tmp_path / "numbers.json"
    rc = main(["report", str(lfp_dir), str(sg_dir), "--out", str(out), "--json", str(js),
               "--limit", "96", "--device", "cpu", "--progress", "off"])
    assert rc == 0
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    expected = {"spike_rate_hist.png", "rate_over_time.png", "synops.png", "raster_lfp.png", "raster_sg.png",
                "weight_hist.png", "sign_changes.png", "pruning.png", "training.png", "updates.png"}
    assert expected <= set(pngs)
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 1000, name
    # self-contained: every figure embedded, nothing loaded from elsewhere
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert not re.search(r'src="(?!data:)', page)
    # side-by-side summary with a ratio column
    assert "| measure | lfp | sg | sg / lfp |" in md
    assert "SynOps per sample" in md and "hidden spike rate" in md

    data = json.loads(js.read_text())
    assert [r["run"] for r in data["runs"]] == ["lfp", "sg"]
    for r in data["runs"]:
        assert r["eval"]["n"] == 96
        assert r["pruning"]["curve"][0]["accuracy"] == pytest.approx(r["eval"]["accuracy"])
        assert len(r["pruning"]["curve"]) == 20
        assert r["activity"]["network"]["synops_per_sample"] > 0
        assert r["sign_changes"]["available"] and r["updates"]["records"] >= 2
        assert 0 <= r["lfp_check"]["all_weights"]["zero_update_fraction"] <= 1
    assert data["runs"][0]["trainer"] == "lfp" and data["runs"][1]["trainer"] == "surrogate"
    assert data["runs"][0]["updates"]["feedback_summary"]            # LFP logs feedback reach
    assert "hidden spike rate (spikes / neuron / step)" in data["summary"]["values"]


def test_report_accuracy_matches_the_training_log(runs):
    from spikelfp.diagnostics import analyze_run

    lfp_dir, _, metrics = runs
    r = analyze_run(lfp_dir, checkpoint="last", device="cpu", prune=False)
    assert r["eval"]["accuracy"] == pytest.approx(metrics["test_acc"])
    assert [d["rate"] for d in r["activity"]["layers"]] == pytest.approx(metrics["spike_rate"])


def test_report_bad_input_exits_2(runs, tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert main(["report", str(runs[0]), "--limit", "0", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("spikelfp report: error:") for line in err)
