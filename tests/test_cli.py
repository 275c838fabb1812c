"""The Hydra entry point: composition, saved config, clear refusals, and a 2-process accelerate launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from erase.cli import CONFIGS, run_task
from erase.methods.base import MethodError

FAST = ["method.params.num_steps=3", "method.params.trajectories=2", "method.params.refresh_every=2",
        "method.train.steps=2", "method.train.lr=1e-3", "method.train.checkpoint_every=0"]


def _cfg(overrides):
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("group", ["model", "method", "concept", "eval"])
def test_every_config_composes(group):
    for f in sorted((CONFIGS / group).glob("*.yaml")):
        cfg = _cfg([f"{group}={f.stem}", "out_dir=/tmp/unused"])
        assert cfg[group]["name" if group != "concept" else "id"]


def test_erase_task_writes_config_and_checkpoint(tmp_path):
    cfg = _cfg(["model=tiny_sd1", "method=esd_u", "concept=toy_exposed", "eval=none", "task=erase", "cpu=true",
                f"out_dir={tmp_path}", *FAST])
    cfg.concept.prompts = ["a cat"]  # words the tiny random model's byte-level tokenizer knows
    summary = run_task(cfg)
    assert (tmp_path / "config.yaml").is_file() and "method" in (tmp_path / "config.yaml").read_text()
    assert (tmp_path / "export" / "model_index.json").is_file()  # one hub folder: card beside it
    assert (tmp_path / "export" / "erased_weights.safetensors").is_file()
    assert summary["erasure"]["stats"]["steps"] == 2
    assert summary["method"] == "esd-u"  # the run is named after the variant it ran, not "esd"


def test_method_family_mismatch_refused_before_work(tmp_path):
    cfg = _cfg(["model=tiny_flux", "method=adversarial", "method.params.attack=prefix", "eval=none", "task=erase",
                "cpu=true", f"out_dir={tmp_path}"])
    cfg.concept.prompts = ["a cat"]
    with pytest.raises(MethodError, match=r"single CLIP.*use method\.params\.attack=embedding"):
        run_task(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_adversarial_picks_the_attack_that_works_for_the_family():
    from erase.methods import build_method
    from erase.models.families import get_family

    method = build_method("adversarial", {"attack": "auto"})
    method.check(get_family("flux"))  # two text encoders: no refusal, the embedding attack
    assert method.attack_for(get_family("flux")) == "embedding" and method.attack_for(get_family("sd1")) == "prefix"


def _cli(args, cwd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "erase.cli", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run


def test_sweep_over_a_closed_form_and_a_fine_tuning_method(tmp_path):
    """`erase -m method=uce,esd_x method.train.steps=3`: UCE carries the shared train block (ignored), so the sweep
    composes; each job lands in <sweep dir>/<n>-<label> with its Hydra files, none in the working directory."""
    work = tmp_path / "work"
    work.mkdir()
    sweep = tmp_path / "sweep"
    _cli(["-m", "method=uce,esd_x", "method.train.steps=3", "method.train.checkpoint_every=0", "model=tiny_sd1",
          "eval=none", "task=erase", "cpu=true", "export=false", "concept.prompts=[a cat]", f"hydra.sweep.dir={sweep}"],
         cwd=work)
    jobs = {p.name: json.loads((p / "summary.json").read_text()) for p in sweep.iterdir() if p.is_dir()}
    assert set(jobs) == {"0-uce", "1-esd-x"}, sorted(jobs)
    assert jobs["0-uce"]["method"] == "uce" and jobs["1-esd-x"]["method"] == "esd-x"
    assert jobs["1-esd-x"]["erasure"]["stats"]["steps"] == 3
    assert (sweep / "1-esd-x" / ".hydra" / "config.yaml").is_file()
    assert list(work.iterdir()) == []


def test_hydra_run_folder_is_out_dir(tmp_path):
    """Hydra's own files (.hydra/, the log) go to the run's out_dir when one is given, else the dated default."""
    with initialize_config_dir(str(CONFIGS), version_base=None):
        given = compose("config", overrides=[f"out_dir={tmp_path}/run"], return_hydra_config=True)
        default = compose("config", overrides=["method=uce"], return_hydra_config=True)
    assert given.hydra.run.dir == f"{tmp_path}/run"
    assert default.hydra.run.dir.startswith("outputs/") and default.hydra.run.dir.endswith("-uce")
    assert given.hydra.sweep.dir == f"{tmp_path}/run"  # a sweep given out_dir puts its jobs under it


def test_two_process_accelerate_launch_ranks_agree(tmp_path):
    """`accelerate launch` of the same entry point with the shipped DDP file (configs/accelerate/ddp.yaml): gloo on
    CPU, both ranks end with the same weights."""
    ddp = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "ddp.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ddp), "--num_processes", "2",
           "--mixed_precision", "no", "-m", "erase.cli",
           "model=tiny_sd1", "eval=none", "task=erase", "cpu=true", "export=false", f"out_dir={tmp_path}",
           "concept.prompts=[a cat]", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = sorted((tmp_path / "ranks").glob("rank-*.json"))
    digests = [json.loads(p.read_text()) for p in ranks]
    assert [d["rank"] for d in digests] == [0, 1] and {d["world"] for d in digests} == {2}
    assert digests[0]["digest"] == digests[1]["digest"]


def test_python_api_example(tmp_path, monkeypatch):
    """The README's Python API example, executed as written."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    run, report = scope["run"], scope["report"]
    assert run["method"] == "esd-x" and run["erasure"]["stats"]["steps"] == 4
    assert (Path(run["export"]["pipeline"]) / "model_index.json").is_file()
    assert report["evaluation"]["rates"]["prompts/toy"]["n"] == 4
    assert (tmp_path / "runs" / "toy-eval" / "summary.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing else in the working directory


def test_python_api_evaluates_a_loaded_pipeline(tmp_path):
    """`erase.evaluate` on a model in memory (here a tiny random SD1): the same engine and summary, nothing loaded."""
    import erase
    from erase.models.tiny import tiny_pipeline

    small = ["eval.suites.prompts.n=2", "eval.suites.utility.n_prompts=2", "eval.suites.prompts-train-phrase=null",
             "eval.suites.edits=null", "eval.suites.benign-edits=null"]
    summary = erase.evaluate(tiny_pipeline("sd1"), eval="toy", out_dir=tmp_path / "ev", overrides=small)
    assert summary["evaluation"]["rates"]["prompts/toy"]["n"] == 2
    assert (tmp_path / "ev" / "summary.json").is_file() and (tmp_path / "ev" / "eval").is_dir()
