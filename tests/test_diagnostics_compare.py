"""``spikelfp compare`` end to end on a tiny budget (digits, 32 samples, T = 5): the same initial
weights per seed for every trainer, every number of the comparison section recomputed here from
the runs' own files (metrics.jsonl, updates.jsonl, last.pt) by independent code, the memory
panel (LFP and BPTT grow with T, F3 and FFzero do not), and an interrupted compare that
continues where it stopped (fault injection) with the same result as an uninterrupted one."""

import json
import math
import re
import statistics

import pytest
import torch
import yaml

import spikelfp.diagnostics.compare as cmp
from hardware_export import nir_roundtrip_agreement as nir_agreement
from spikelfp.cli import main
from spikelfp.core.readout import predict
from spikelfp.data.encoders import encode_batch
from spikelfp.data.registry import build_data
from spikelfp.train.checkpoint import load_checkpoint, read_checkpoint
from spikelfp.train.registry import trainer_names
from spikelfp.train.surrogate import SurrogateTrainer

PNG = b"\x89PNG\r\n\x1a\n"
TRAINERS = [t for t in ("lfp", "surrogate", "ffzero", "f3") if t in trainer_names()]
SEEDS = [0, 1]
HIDDEN, CLASSES, T = 16, 10, 5
TIMES = ("epoch_seconds", "wall_seconds")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread_module):
    """One intra-op thread: tiny nets; two threads on a busy 2-core machine only spin."""
    yield


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"hidden": [HIDDEN], "limit": 32, "test_limit": 32, "steps": T, "epochs": 2,
                                   "log_updates_every": 1, "device": "cpu", "val_fraction": 0.1,
                                   "trainer": "lfp", "seed": 7}))  # trainer and seed: compare sets them
    out = root / "cmp"
    rc = main(["compare", "--config", str(cfg), "--trainers", ",".join(TRAINERS), "--seeds", "0,1",
               "--memory-steps", "1,16", "--set", "ffzero.lr=0.01", "--set", "ffzero.ff_directions=8",
               "--out", str(out), "--progress", "off"])
    assert rc == 0
    data = json.loads((out / "report" / "report.json").read_text())
    return out, data["comparison"], data


def _metrics(out, name):
    return [json.loads(s) for s in (out / "runs" / name / "metrics.jsonl").read_text().splitlines() if s.strip()]


def _mean_std(v):
    return sum(v) / len(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def test_f3_is_part_of_the_comparison_when_registered():
    if "f3" not in trainer_names():
        pytest.skip("f3 is not registered yet (spikelfp/train/f3.py)")
    assert "f3" in TRAINERS


def test_report_files_and_sections(done):
    out, comp, data = done
    rep = out / "report"
    md, page = (rep / "report.md").read_text(), (rep / "report.html").read_text()
    for name in ("compare_accuracy.png", "compare_memory.png", "compare_pruning.png"):
        assert (rep / name).read_bytes()[:8] == PNG and f"]({name})" in md
    assert page.count('src="data:image/png;base64,') == len(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))
    for section in ("## Comparison of trainers", "### Test accuracy per epoch", "### Memory of one training step vs T",
                    "### Pruning", "### Exported network", "### Runs", "## Per-run details (seed 0)"):
        assert section in md
    assert "| measure | " + " | ".join(TRAINERS) + " |" in md
    assert comp["trainers"] == TRAINERS and comp["seeds"] == SEEDS
    # the detailed (spikelfp report) part: the first seed's runs, in order
    assert [r["run"] for r in data["runs"]] == [f"{t}-s0" for t in TRAINERS]
    # every run folder is an ordinary run
    for t in TRAINERS:
        for s in SEEDS:
            d = out / "runs" / f"{t}-s{s}"
            assert {"config.yaml", "init.pt", "last.pt", "best.pt", "metrics.jsonl", "metrics.csv"} <= {
                p.name for p in d.iterdir()}
            assert yaml.safe_load((d / "config.yaml").read_text())["trainer"] == t


def test_same_initial_weights_per_seed(done):
    out = done[0]
    for s in SEEDS:
        inits = [read_checkpoint(out / "runs" / f"{t}-s{s}" / "init.pt")["model"] for t in TRAINERS]
        for other in inits[1:]:
            assert other.keys() == inits[0].keys()
            assert all(torch.equal(other[k], inits[0][k]) for k in inits[0])
    a = read_checkpoint(out / "runs" / f"{TRAINERS[0]}-s0" / "init.pt")["model"]
    b = read_checkpoint(out / "runs" / f"{TRAINERS[0]}-s1" / "init.pt")["model"]
    key = next(k for k in a if k.endswith("weight"))
    assert not torch.equal(a[key], b[key])


def test_per_trainer_settings(done):
    comp = done[1]
    base = comp["configs"][f"{TRAINERS[0]}-s0"]
    for name, c in comp["configs"].items():
        t = name.rsplit("-s", 1)[0]
        assert c["trainer"] == t and c["seed"] == int(name.rsplit("-s", 1)[1])
        for k in ("hidden", "steps", "epochs", "batch_size", "limit", "encoder", "dataset", "beta", "reset"):
            assert c[k] == base[k], k
        assert c["lr"] == {"ffzero": 0.01, "lfp": 2e-3}.get(t, 1e-3)  # the trainers' own defaults
    if "ffzero" in TRAINERS:
        assert comp["configs"]["ffzero-s0"]["ff_directions"] == 8


def test_accuracy_and_time_match_metrics(done):
    out, comp, _ = done
    for t in TRAINERS:
        p = comp["per_trainer"][t]
        rows = {s: _metrics(out, f"{t}-s{s}") for s in SEEDS}
        assert p["epochs"] == [1, 2]
        for j, e in enumerate(p["epochs"]):
            accs = [next(r["test_acc"] for r in rows[s] if r["epoch"] == e) for s in SEEDS]
            m, sd = _mean_std(accs)
            assert p["test_acc_per_epoch"][j]["mean"] == pytest.approx(m)
            assert p["test_acc_per_epoch"][j]["std"] == pytest.approx(sd)
        finals = [rows[s][-1]["test_acc"] for s in SEEDS]
        assert p["final_test_acc"]["mean"] == pytest.approx(_mean_std(finals)[0])
        assert p["final_test_acc"]["std"] == pytest.approx(_mean_std(finals)[1])
        # analysing last.pt gives back the last metrics row's test accuracy (same evaluation)
        assert [r["eval_accuracy"] for r in p["per_run"]] == pytest.approx(finals)
        for key in TIMES:
            per_run = [sum(r[key] for r in rows[s]) / len(rows[s]) for s in SEEDS]
            assert p[key]["mean"] == pytest.approx(_mean_std(per_run)[0])
            assert p[key]["std"] == pytest.approx(_mean_std(per_run)[1])


def test_spikes_and_synops_match_metrics(done):
    """Spikes per sample = sum over layers of the logged test spike rate x neurons x T; SynOps of
    the 16-10 spike-driven layer = hidden spikes x fan-out 10."""
    out, comp, _ = done
    for t in TRAINERS:
        p = comp["per_trainer"][t]
        for s, r in zip(SEEDS, p["per_run"]):
            rates = _metrics(out, f"{t}-s{s}")[-1]["spike_rate"]
            hidden = rates[0] * HIDDEN * T
            assert r["spikes_per_sample"] == pytest.approx(hidden + rates[1] * CLASSES * T, rel=1e-9)
            assert r["hidden_spikes_per_sample"] == pytest.approx(hidden, rel=1e-9)
            assert r["synops_per_sample"] == pytest.approx(hidden * CLASSES, rel=1e-9)
        assert p["synops_per_sample"]["mean"] == pytest.approx(
            _mean_std([r["synops_per_sample"] for r in p["per_run"]])[0])


def _test_batch(cfg):
    """The whole (limited) test split, encoded by the run's encoder: (input frame, labels)."""
    data = build_data(cfg)
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    y = torch.stack([torch.as_tensor(data.test[i][1]) for i in range(len(data.test))])
    frame, steps = encode_batch(x.float(), cfg["encoder"], T, False)
    assert steps == T and len(y) == 32
    return frame, y


def _prune_half(net):
    """Zero the floor(N / 2) smallest |w| of all weights together (ties by position)."""
    ws = [m.weight for m in net if getattr(m, "weight", None) is not None]
    flat = torch.cat([w.detach().abs().flatten().double() for w in ws])
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[: math.floor(0.5 * flat.numel())]] = False
    off = 0
    with torch.no_grad():
        for w in ws:
            w.mul_(keep[off: off + w.numel()].reshape(w.shape).to(w.dtype))
            off += w.numel()


def test_silent_neurons_and_pruning_recomputed(done):
    """Silent hidden neurons and the pruning curve at 50 % from last.pt, computed here."""
    out, comp, _ = done
    for t in TRAINERS:
        p = comp["per_trainer"][t]
        pruned = []
        for s, r in zip(SEEDS, p["per_run"]):
            net, cfg, _ = load_checkpoint(out / "runs" / f"{t}-s{s}" / "last.pt")
            x, y = _test_batch(cfg)
            with torch.no_grad():
                spiking = [rec.spikes for rec in net.run(x, T).records if rec.spikes is not None]
                hidden_counts = spiking[0].float().sum(dim=(0, 1))
            assert r["hidden_silent_fraction"] == pytest.approx(float((hidden_counts == 0).float().mean()))
            _prune_half(net)
            with torch.no_grad():
                tr = net.run(x, T)
            pruned.append(float((predict(tr.output, tr.membrane) == y).float().mean()))
        j = p["pruning"]["fractions"].index(0.5)
        assert p["pruning"]["accuracy"][j]["mean"] == pytest.approx(_mean_std(pruned)[0])
        assert p["pruning"]["accuracy"][j]["std"] == pytest.approx(_mean_std(pruned)[1])
        assert p["pruning"]["accuracy"][0]["mean"] == pytest.approx(p["final_test_acc"]["mean"])


def test_update_sparsity_matches_updates_log(done):
    """Zero-update weights: per record, exactly-zero entries of all weight tensors pooled by size,
    averaged over the records of updates.jsonl."""
    out, comp, _ = done
    for t in TRAINERS:
        p = comp["per_trainer"][t]
        for s, r in zip(SEEDS, p["per_run"]):
            lines = [json.loads(x) for x in (out / "runs" / f"{t}-s{s}" / "updates.jsonl").read_text().splitlines()]
            assert len(lines) == 2  # one batch per epoch, logged every step
            names = [k for k in lines[0] if k.endswith("weight")]
            numel = {k: lines[0][k]["numel"] for k in names}
            per_name = {k: sum(ln[k]["zero_fraction"] for ln in lines) / len(lines) for k in names}
            want = sum(per_name[k] * numel[k] for k in names) / sum(numel.values())
            assert r["update_zero_fraction"] == pytest.approx(want)


def test_memory_panel(done):
    """Peak memory of one step: LFP and BPTT keep the [T, B, N] trace (grows ~T), F3 and FFzero
    are stepwise (flat in T)."""
    comp = done[1]
    mem = comp["memory"]
    assert mem["steps"] == [1, T, 16]  # the runs' T is measured too
    for t in TRAINERS:
        b = dict(zip(mem["steps"], mem["bytes"][t]))
        assert comp["per_trainer"][t]["peak_memory_bytes"] == b[T] > 0
        if t in ("lfp", "surrogate"):
            assert b[16] > 2 * b[T] > 2 * b[1], (t, b)
        if t in ("f3", "ffzero"):
            assert b[16] <= 1.05 * b[T], (t, b)


def test_export_not_applicable_to_reset_subtract(done):
    comp = done[1]
    for t in TRAINERS:
        p = comp["per_trainer"][t]
        assert p["export_agreement"] is None and "reset 'subtract'" in p["export_note"]
        assert all(e["applies"] is False for e in p["export"])


# ---------------------------------------------------------------------------- resume

def _args(cfg, out):
    return ["compare", "--config", str(cfg), "--trainers", "lfp,surrogate", "--seeds", "0",
            "--memory-steps", "none", "--no-prune", "--out", str(out), "--progress", "off"]


def test_interrupted_compare_continues(tmp_path, monkeypatch):
    """A Ctrl-C in the second run's second epoch: exit 130, the first run finished, no report;
    continuing skips the finished run, resumes the other from its checkpoint and ends with the
    metrics and weights of an uninterrupted compare; a third time trains nothing. Reset "zero":
    the NIR round trip applies (identical spikes)."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"hidden": [HIDDEN], "limit": 64, "test_limit": 32, "steps": T, "epochs": 2,
                                   "device": "cpu", "reset": "zero", "log_updates_every": 1}))
    ref, out = tmp_path / "ref", tmp_path / "cut"
    base = cmp.base_config(str(cfg), {"progress": "off"})
    assert cmp.run_all(cmp.plan_runs(base, ["lfp", "surrogate"], [0], {}, ref), ref, echo=lambda s: None)

    real = SurrogateTrainer.step
    calls = {"n": 0}

    def flaky(self, batch, want_stats=False):
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2, second of two batches
            raise KeyboardInterrupt
        return real(self, batch, want_stats)

    monkeypatch.setattr(SurrogateTrainer, "step", flaky)
    assert main(_args(cfg, out)) == 130
    monkeypatch.setattr(SurrogateTrainer, "step", real)
    ck = read_checkpoint(out / "runs" / "surrogate-s0" / "last.pt")
    assert (ck["epoch"], ck["batch"]) == (1, 1)
    assert not (out / "report").exists()

    seen = []
    real_train = cmp.train

    def spy(cfg=None, resume=None, overrides=None, echo=print):
        seen.append(resume)
        return real_train(cfg, resume=resume, overrides=overrides, echo=echo)

    monkeypatch.setattr(cmp, "train", spy)
    plans = cmp.plan_runs(base, ["lfp", "surrogate"], [0], {}, out)
    assert cmp.run_all(plans, out, echo=lambda s: None)  # what the same command does first
    assert seen == [str(out / "runs" / "surrogate-s0")]  # lfp skipped, surrogate resumed
    for name in ("lfp-s0", "surrogate-s0"):
        a = [{k: v for k, v in r.items() if k not in TIMES} for r in _metrics(ref, name)]
        b = [{k: v for k, v in r.items() if k not in TIMES} for r in _metrics(out, name)]
        assert a == b, name
        wa = read_checkpoint(ref / "runs" / name / "last.pt")["model"]
        wb = read_checkpoint(out / "runs" / name / "last.pt")["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    seen.clear()  # everything finished: nothing is trained again
    assert cmp.run_all(plans, out, echo=lambda s: None)
    assert seen == []
    for e in cmp.export_agreements(plans, nir_agreement).values():
        assert e["applies"] and e["identical"] and e["agreement"] == 1.0
        assert e["output_rate"] > 0  # not trivially equal: the output spiked


def test_bad_input_exits_2_before_writing(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compare", "--trainers", "lfp,nope", "--out", str(out)]) == 2
    assert main(["compare", "--trainers", "lfp", "--set", "lfp.steps=3", "--out", str(out)]) == 2
    assert main(["compare", "--trainers", "lfp", "--set", "surrogate.lr=1", "--out", str(out)]) == 2
    assert main(["compare", "--trainers", "lfp", "--set", "lfp.lr=-1", "--out", str(out)]) == 2
    assert main(["compare", "--trainers", "lfp", "--seeds", "0,0", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("spikelfp compare: error:") for line in err)
    assert "same for every trainer" in err[1]
    assert not out.exists()


def test_parse_sets():
    got = cmp.parse_sets(["lfp.lr=0.01", "lfp.rule=z", "surrogate.schedule=cosine"], ["lfp", "surrogate"])
    assert got == {"lfp": {"lr": 0.01, "rule": "z"}, "surrogate": {"schedule": "cosine"}}
    s = cmp.spread([0.5, 0.7, None])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(math.sqrt(0.02))


def test_run_status(tmp_path):
    """A run folder killed before its first checkpoint is started again (emptied); one with
    last.pt is resumed unless the state says it finished with the same config; a folder that is
    not a run is refused."""
    from spikelfp.train.runs import RUN_MARKER

    (plan,) = cmp.plan_runs({"epochs": 1}, ["lfp"], [3], {}, tmp_path)
    d = tmp_path / "runs" / "lfp-s3"
    state = {"runs": {}, "memory": None}
    assert plan.name == "lfp-s3" and plan.cfg["run_name"] == "lfp-s3" and plan.cfg["seed"] == 3
    assert cmp.run_status(plan, state) == "new"
    d.mkdir(parents=True)
    (d / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a spikelfp run folder"):
        cmp.run_status(plan, state)
    (d / "notes.txt").unlink()
    (d / RUN_MARKER).write_text("1\n")
    (d / "config.yaml").write_text("{}\n")
    assert cmp.run_status(plan, state) == "new" and not d.exists()
    d.mkdir()
    (d / "last.pt").write_bytes(b"")
    assert cmp.run_status(plan, state) == "resume"
    state["runs"]["lfp-s3"] = {"config": dict(plan.cfg, device="cuda")}  # device may differ
    assert cmp.run_status(plan, state) == "skip"
    state["runs"]["lfp-s3"] = {"config": dict(plan.cfg, epochs=2)}       # more epochs: resume
    assert cmp.run_status(plan, state) == "resume"


def test_per_trainer_network_is_stated(tmp_path):
    """``--set TRAINER.hidden=...`` trains that trainer on its own width: the run has that net,
    the others keep the config's, and the report names the network of each trainer."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"hidden": [HIDDEN], "limit": 16, "test_limit": 16, "steps": 3, "epochs": 1,
                                   "device": "cpu", "val_fraction": 0.0}))
    out = tmp_path / "c"
    rc = main(["compare", "--config", str(cfg), "--trainers", "lfp,f3", "--seeds", "0", "--set", "f3.hidden=[12]",
               "--memory-steps", "none", "--no-prune", "--out", str(out), "--progress", "off"])
    assert rc == 0
    w = {t: read_checkpoint(out / "runs" / f"{t}-s0" / "last.pt")["model"]["1.weight"].shape[0] for t in ("lfp", "f3")}
    assert w == {"lfp": HIDDEN, "f3": 12}
    comp = json.loads((out / "report" / "report.json").read_text())["comparison"]
    assert comp["per_trainer"]["lfp"]["network"] == f"mlp hidden [{HIDDEN}]"
    assert comp["per_trainer"]["f3"]["network"] == "mlp hidden [12]"
    md = (out / "report" / "report.md").read_text()
    assert f"on the mlp hidden [{HIDDEN}] network (f3 on mlp hidden [12] (set per trainer))" in md
    assert re.search(rf"\| network \| mlp hidden \[{HIDDEN}\] \| mlp hidden \[12\] \|", md)
