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
    cfg = _cfg(["model=tiny_sd1", "concept=toy_exposed", "eval=none", "task=erase", "cpu=true", f"out_dir={tmp_path}", *FAST])
    cfg.concept.prompts = ["a cat"]  # words the tiny random model's byte-level tokenizer knows
    summary = run_task(cfg)
    assert (tmp_path / "config.yaml").is_file() and "method" in (tmp_path / "config.yaml").read_text()
    assert (tmp_path / "export" / "pipeline" / "model_index.json").is_file()
    assert (tmp_path / "export" / "erased_weights.safetensors").is_file()
    assert summary["erasure"]["stats"]["steps"] == 2


def test_method_family_mismatch_refused_before_work(tmp_path):
    cfg = _cfg(["model=tiny_flux", "method=adversarial", "eval=none", "task=erase", "cpu=true", f"out_dir={tmp_path}"])
    cfg.concept.prompts = ["a cat"]
    with pytest.raises(MethodError, match="single CLIP"):
        run_task(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_two_process_accelerate_launch_ranks_agree(tmp_path):
    """`accelerate launch` of the same entry point: gloo on CPU, DDP, both ranks end with the same weights."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "erase.cli",
           "model=tiny_sd1", "eval=none", "task=erase", "cpu=true", "export=false", f"out_dir={tmp_path}",
           "concept.prompts=[a cat]", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = sorted((tmp_path / "ranks").glob("rank-*.json"))
    digests = [json.loads(p.read_text()) for p in ranks]
    assert [d["rank"] for d in digests] == [0, 1] and {d["world"] for d in digests} == {2}
    assert digests[0]["digest"] == digests[1]["digest"]
