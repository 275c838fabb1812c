"""Nothing lost, nothing read where it should not be (issue 13): training state, shared outputs, inputs.

Each test reproduces one failure found by trying a hostile but fair user's inputs; kill and race cases run real
subprocesses with bounded timeouts and wait on what the other process says, never on the clock.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from erase.concept import Concept
from erase.export import export, load_erased_weights, save_safetensors, snapshot
from erase.methods import ESD
from erase.methods.base import MethodError, NonFiniteLossError
from erase.models.adapter import DiffusionAdapter
from erase.models.families import ModelLoadError, load_pipeline
from erase.models.tiny import save_tiny_pipeline, tiny_pipeline
from erase.outdir import LOCK_NAME, OutDirError, OutDirLocked, locked_out_dir, prepare_out_dir
from erase.run import erase
from erase.training import ResumeMismatchError, TrainConfig, checkpoints, train

CONCEPT = Concept(id="cat", prompts=["a cat"], anchor="a dog", preserve=["a bird"])
FAST_ESD = {"variant": "esd-x", "num_steps": 3, "trajectories": 2, "refresh_every": 2}
ESD_FAST = {"name": "esd", "params": FAST_ESD, "train": {"steps": 3, "lr": 1e-2, "cpu": True}}


def tiny_adapter(family: str = "sd1") -> DiffusionAdapter:
    a = DiffusionAdapter(tiny_pipeline(family))
    a.default_size = 32
    return a


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 4, "lr": 1e-2, "cpu": True, "log_every": 1, **kw})


def _all_finite(folder: Path) -> bool:
    return all(torch.isfinite(t).all() for f in ("trainable.safetensors", "optimizer.safetensors")
               for t in load_file(folder / f).values() if t.is_floating_point())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ training state
class DivergingESD(ESD):
    """A finite loss whose gradient is not (d sqrt(x)/dx at 0 is inf, times 0): the update makes the weights NaN,
    as an overflowing gradient at a huge learning rate does, while the loss of that step looks fine."""

    def loss(self, model, step, generator):
        loss, logs = super().loss(model, step, generator)
        if step == 1:
            p = next(q for q in model.parameters() if q.requires_grad)
            loss = loss + torch.sqrt(0 * p.sum())
        return loss, logs


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    with pytest.raises(NonFiniteLossError, match="trained weights are NaN/inf after step 2"):
        train(DivergingESD(**FAST_ESD), tiny_adapter(), CONCEPT, cfg(checkpoint_every=1), tmp_path)
    root = tmp_path / "checkpoints"
    written = [p for p in root.iterdir() if p.name.startswith("step-")] if root.is_dir() else []
    assert all(_all_finite(p) for p in written), "a checkpoint holds non-finite weights"


def test_resume_skips_a_non_finite_checkpoint_and_names_it(tmp_path, capsys):
    kw = dict(steps=4, checkpoint_every=1)
    full = tiny_adapter()
    train(ESD(**FAST_ESD), full, CONCEPT, cfg(**kw), tmp_path / "full")

    train(ESD(**FAST_ESD), tiny_adapter(), CONCEPT, cfg(stop_after=2, **kw), tmp_path / "cut")
    newest = checkpoints(tmp_path / "cut" / "checkpoints")[-1]
    assert newest.name == "step-0000002"
    weights = load_file(newest / "trainable.safetensors")
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("nan"))  # as a run that diverged would have left it
    save_file(weights, newest / "trainable.safetensors")

    resumed = tiny_adapter()
    r = train(ESD(**FAST_ESD), resumed, CONCEPT, cfg(**kw), tmp_path / "cut")
    said = capsys.readouterr().out
    assert str(newest) in said and "non-finite" in said
    assert r.resumed_from == 1 and r.steps == 4
    reference = dict(full.denoiser.named_parameters())
    for n, p in resumed.denoiser.named_parameters():
        assert torch.equal(p, reference[n]), n  # resuming from the one before still repeats the uninterrupted run


def test_resume_with_another_config_is_refused_naming_the_keys(tmp_path):
    train(ESD(**FAST_ESD), tiny_adapter(), CONCEPT, cfg(stop_after=1), tmp_path)
    with pytest.raises(ResumeMismatchError, match=r"train\.lr: 0\.01 in the checkpoint, 0\.001 now.*another out_dir"):
        train(ESD(**FAST_ESD), tiny_adapter(), CONCEPT, cfg(lr=1e-3), tmp_path)
    with pytest.raises(ResumeMismatchError, match=r"run\.params\.num_steps"):  # the method's parameters count too
        erase(tiny_adapter(), {**ESD_FAST, "params": {**FAST_ESD, "num_steps": 4},
                               "train": {**ESD_FAST["train"], "steps": 4}}, CONCEPT, tmp_path, do_export=False)
    with pytest.raises(ResumeMismatchError, match="steps may grow"):
        train(ESD(**FAST_ESD), tiny_adapter(), CONCEPT, cfg(steps=4, checkpoint_every=1, stop_after=2), tmp_path / "b")
        train(ESD(**FAST_ESD), tiny_adapter(), CONCEPT, cfg(steps=1), tmp_path / "b")
    grown = train(ESD(**FAST_ESD), tiny_adapter(), CONCEPT, cfg(steps=6, log_every=3), tmp_path)  # on the allow-list
    assert grown.resumed_from == 1 and grown.steps == 6


def test_keep_checkpoints_zero_keeps_every_checkpoint(tmp_path):
    train(ESD(**FAST_ESD), tiny_adapter(), CONCEPT, cfg(steps=4, checkpoint_every=1, keep_checkpoints=0), tmp_path)
    assert [p.name for p in checkpoints(tmp_path / "checkpoints")] == ["step-0000001", "step-0000002", "step-0000003"]
    with pytest.raises(ValueError, match="keep_checkpoints must be 0 or more"):
        TrainConfig(keep_checkpoints=-1)


def test_a_stopped_run_exports_nothing_and_says_how_to_resume(tmp_path, capsys):
    stopped = erase(tiny_adapter(), {**ESD_FAST, "train": {**ESD_FAST["train"], "stop_after": 1}}, CONCEPT, tmp_path)
    assert stopped.unfinished and stopped.export is None
    assert not (tmp_path / "export").exists()
    said = capsys.readouterr().out
    assert "step 1 of 3" in said and "Resume" in said and "hardened" not in said
    done = erase(tiny_adapter(), ESD_FAST, CONCEPT, tmp_path)
    assert done.unfinished is None and (tmp_path / "export" / "model_index.json").is_file()


def test_stale_temporaries_and_half_deleted_checkpoints_are_cleaned_on_start(tmp_path):
    root = tmp_path / "checkpoints"
    tmp = root / ".tmp-step-0000005-999999"  # a checkpoint write killed before its rename
    half = root / "step-0000003"  # a checkpoint deletion (older erase) killed midway: state.json left, weights gone
    doomed = root / ".del-step-0000001-4242"  # a deletion killed after its rename
    for folder in (tmp, half, doomed):
        folder.mkdir(parents=True)
    (tmp / "trainable.safetensors").write_bytes(b"partial")
    (half / "state.json").write_text('{"step": 3}')
    (doomed / "optimizer.json").write_text("{}")
    r = train(ESD(**FAST_ESD), tiny_adapter(), CONCEPT, cfg(steps=2, stop_after=1), tmp_path)
    assert r.resumed_from == 0
    assert sorted(p.name for p in root.iterdir()) == ["step-0000001"]

    old = tmp_path / "old" / "checkpoints" / "step-0000002"  # a complete checkpoint of an older erase: never deleted
    old.mkdir(parents=True)
    for name in ("trainable.safetensors", "optimizer.pt", "state.json"):
        (old / name).write_bytes(b"{}")
    with pytest.raises(ResumeMismatchError, match="older erase.*pickle"):
        train(ESD(**FAST_ESD), tiny_adapter(), CONCEPT, cfg(steps=2), tmp_path / "old")
    assert sorted(p.name for p in old.iterdir()) == ["optimizer.pt", "state.json", "trainable.safetensors"]


def test_changed_weights_file_is_byte_reproducible_and_its_hash_is_in_the_card(tmp_path):
    runs = [erase(tiny_adapter(), ESD_FAST, CONCEPT, tmp_path / f"run{i}") for i in range(2)]
    digests = {_sha256(r.export.weights) for r in runs}
    assert len(digests) == 1
    (digest,) = digests
    assert runs[0].export.weights_sha256 == digest and digest in runs[0].export.card.read_text()
    # The safetensors library orders metadata differently per writer: rewrite the same tensors a few times.
    tensors = load_file(runs[0].export.weights)
    again = {save_safetensors(tensors, tmp_path / f"w{i}.safetensors", {"format": "pt", "components": "prefixed",
                                                                          "b": "1", "a": "2"}) for i in range(6)}
    assert len(again) == 1


# ------------------------------------------------------------------------------------------------ shared outputs
_HOLDER = textwrap.dedent("""
    import sys
    from erase.outdir import locked_out_dir
    with locked_out_dir(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.readline()  # hold until told (or killed)
""")


def _holder(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_run_into_one_out_dir_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(OutDirLocked, match=f"pid {holder.pid}"):
            erase(tiny_adapter(), ESD_FAST, CONCEPT, tmp_path)
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "export").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # killed mid-run: its lock file stays behind
        holder.wait(timeout=60)
    assert (tmp_path / LOCK_NAME).exists()
    with locked_out_dir(tmp_path):  # the kernel dropped the dead holder's lock: taken over
        assert f"pid {os.getpid()}" in (tmp_path / LOCK_NAME).read_text()
        with locked_out_dir(tmp_path):  # re-entrant in one process (the CLI locks, then erase() does)
            pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_two_concurrent_runs_into_one_out_dir_one_succeeds(tmp_path):
    script = textwrap.dedent("""
        import sys
        from erase.outdir import OutDirLocked, locked_out_dir
        try:
            with locked_out_dir(sys.argv[1]):
                print("won", flush=True)
                sys.stdin.readline()
        except OutDirLocked as e:
            print("refused", e, flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    first = [p.stdout.readline().split()[0] for p in procs]
    for p in procs:
        p.communicate("\n", timeout=60)
    assert sorted(first) == ["refused", "won"]


_TRAINER = textwrap.dedent("""
    import sys
    from erase.concept import Concept
    from erase.models.adapter import DiffusionAdapter
    from erase.models.tiny import tiny_pipeline
    from erase.run import erase
    a = DiffusionAdapter(tiny_pipeline("sd1"))
    a.default_size = 32
    erase(a, {"name": "esd", "params": {"variant": "esd-x", "num_steps": 3, "trajectories": 2, "refresh_every": 2},
              "train": {"steps": 40, "lr": 1e-2, "cpu": True, "checkpoint_every": 1}},
          Concept(id="cat", prompts=["a cat"], anchor="a dog", preserve=["a bird"]), sys.argv[1])
""")


def test_a_run_killed_mid_training_is_resumed_by_the_next_one(tmp_path, capsys):
    """kill -9 during training: the next run takes over the dead run's lock, and resumes from a complete checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen([sys.executable, "-c", _TRAINER, str(tmp_path)], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        for _ in range(15000):  # wait (bounded) for a second checkpoint, then kill wherever it is
            # any step >= 2: older checkpoints are pruned as new ones land, so on a fast machine step 2 may be gone
            steps = [c.name.removeprefix("step-") for c in (tmp_path / "checkpoints").glob("step-*")]
            if any(n.isdigit() and int(n) >= 2 for n in steps) \
                    or p.poll() is not None:
                break
            try:
                p.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                pass
        assert p.poll() is None, "the training subprocess ended before it could be killed"
        assert (tmp_path / LOCK_NAME).exists()
    finally:
        p.kill()
        p.wait(timeout=60)
    run = {**ESD_FAST, "train": {"steps": 40, "lr": 1e-2, "cpu": True, "checkpoint_every": 1, "stop_after": 1}}
    result = erase(tiny_adapter(), run, CONCEPT, tmp_path)
    said = capsys.readouterr().out
    resumed = int(said.split("(step ")[1].split(")")[0])
    assert resumed >= 2 and result.stats["steps"] == resumed + 1 and result.unfinished
    assert all(not p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())


def test_a_shared_folder_is_waited_for_not_written_by_two_runs_at_once(tmp_path):
    """The base-evaluation cache is shared by runs on purpose: the second one waits for the first, then goes on."""
    waiter_code = textwrap.dedent("""
        import sys
        from erase.outdir import locked_out_dir
        with locked_out_dir(sys.argv[1], wait=True):
            print("got it", flush=True)
    """)
    holder = _holder(tmp_path)
    waiter = subprocess.Popen([sys.executable, "-c", waiter_code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert f"waiting for another erase run (pid {holder.pid}" in waiter.stdout.readline()
        assert waiter.poll() is None  # still waiting: the holder has not let go
        holder.communicate("\n", timeout=60)  # the first run finishes
        assert waiter.stdout.readline().strip() == "got it"
        assert waiter.wait(timeout=60) == 0
    finally:
        for p in (holder, waiter):
            if p.poll() is None:
                p.kill()


def test_export_temporaries_are_unique_per_process(tmp_path, monkeypatch):
    a = tiny_adapter()
    before = snapshot(a)
    seen = []
    original = type(a.pipe).save_pretrained
    monkeypatch.setattr(type(a.pipe), "save_pretrained", lambda self, d, **kw: (seen.append(Path(d)), original(self, d, **kw)))
    paths = export(a, tmp_path / "export", before, {})
    assert str(os.getpid()) in seen[0].name and seen[0] != tmp_path / "export" / ".pipeline.tmp"
    assert paths.pipeline == tmp_path / "export" and not seen[0].exists()


# ------------------------------------------------------------------------------------------------ inputs
def test_a_mistyped_local_path_is_not_fetched_from_the_hub(tmp_path, monkeypatch):
    import erase.models.families as families

    monkeypatch.chdir(tmp_path)
    (tmp_path / "export").mkdir()  # a run folder: `export/pipeline` is a path that is not there, not a hub repo
    monkeypatch.setattr(families, "_fetch", lambda *a, **k: pytest.fail("a local path was sent to the hub"))
    for path in ("export/pipeline", "./export", "runs/a/export", "~/no-such-erase-folder"):
        with pytest.raises(ModelLoadError, match="does not exist|no model_index.json"):
            load_pipeline(path)
    save_tiny_pipeline("sd1", tmp_path / "run" / "export")
    with pytest.raises(ModelLoadError, match=r"does not exist.*export is one folder now: pass run/export"):
        load_pipeline("run/export/pipeline")  # the layout before exports became one hub folder


def test_out_dir_that_is_a_file_says_what_out_dir_must_be(tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("not a folder")
    for bad in (f, f / "run"):
        with pytest.raises(OutDirError, match="is a file; out_dir must be a folder"):
            prepare_out_dir(bad)
        with pytest.raises(OutDirError, match="must be a folder"):
            erase(tiny_adapter(), ESD_FAST, CONCEPT, bad)


def test_corrupt_safetensors_names_the_file_and_the_remedy(tmp_path):
    folder = save_tiny_pipeline("sd1", tmp_path / "pipe")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 4000])  # a copy cut short
    with pytest.raises(ModelLoadError, match=rf"{weights}.*corrupt or truncated.*export it again.*delete the folder"):
        load_pipeline(folder)
    changed = tmp_path / "erased_weights.safetensors"
    changed.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match=rf"{changed}.*corrupt or truncated.*export it again"):
        load_erased_weights(tiny_adapter(), changed)


# ------------------------------------------------------------------------------------------------ the CLI
CLI_FAST = ["cpu=true", "concept.prompts=[a cat]", "method=esd", "method.params.num_steps=3",
            "method.params.trajectories=2", "method.params.refresh_every=2", "method.train.steps=3",
            "method.train.lr=1e-2", "method.train.checkpoint_every=0"]
TINY_EVAL = ["eval=toy", "eval.suites.prompts.n=2", "~eval.suites.prompts-train-phrase", "~eval.suites.edits",
             "~eval.suites.utility", "~eval.suites.benign-edits"]


def _cli_cfg(overrides):
    from hydra import compose, initialize_config_dir

    from erase.cli import CONFIGS

    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("overrides, match", [
    (["model=tiny_flux", "method=adversarial", "method.params.attack=prefix"], "single CLIP"),
    (["model=tiny_sd1", "method=edit_refusal", "method.params.path=instruct"], "does not match family 'sd1'"),
    (["model=tiny_sd1", "method=edit_refusal", "method.params.photos={source: folder, path: /no/such/photos}"],
     "no such folder"),
    (["model=tiny_sd1", "method=edit_refusal"], "method.params.photos"),  # no default photos (never the toy's)
])
def test_method_family_and_photo_source_are_refused_before_the_model_is_built(tmp_path, monkeypatch, overrides, match):
    import erase.cli as cli

    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model was built before the check"))
    with pytest.raises((MethodError, FileNotFoundError), match=match):
        cli.run_task(_cli_cfg([*overrides, "eval=toy", "task=erase_and_eval", "cpu=true", f"out_dir={tmp_path}"]))
    assert not (tmp_path / "checkpoints").exists()


def test_cli_stopped_run_exports_nothing(tmp_path, capsys):
    from erase.cli import run_task

    summary = run_task(_cli_cfg(["model=tiny_sd1", "eval=none", "task=erase", f"out_dir={tmp_path}", *CLI_FAST,
                                 "method.train.stop_after=1"]))
    assert "unfinished" in summary and "export" not in summary and not (tmp_path / "export").exists()
    said = capsys.readouterr().out
    assert "Resume" in said and "hardened checkpoint" not in said


def test_evaluating_an_export_writes_under_its_out_dir_and_leaves_the_base_cache_alone(tmp_path):
    from erase.cli import run_task

    run_task(_cli_cfg(["model=tiny_sd1", "eval=none", "task=erase", f"out_dir={tmp_path / 'run'}", *CLI_FAST]))
    cache = tmp_path / "cache"
    summary = run_task(_cli_cfg(["model=tiny_sd1", f"model.path={tmp_path / 'run' / 'export'}", "task=evaluate",
                                 *TINY_EVAL, f"eval.base_cache={cache}", f"out_dir={tmp_path / 'ev'}", "cpu=true",
                                 "concept.prompts=[a cat]"]))
    assert not cache.exists(), "an evaluation of an export landed in the base-model cache"
    assert (tmp_path / "ev" / "eval" / "results.jsonl").is_file() and "base" not in summary
    assert summary["model_path"] == str(tmp_path / "run" / "export")


def test_base_cache_is_keyed_by_weights_and_settings_not_by_name(tmp_path):
    from erase.cli import base_eval_dir

    eval_cfg = {"name": "toy", "suites": {"prompts": {"n": 2}}, "base_cache": str(tmp_path / "cache")}
    model = {"name": "tiny-sd1", "path": "tiny:sd1"}

    def where(adapter, **change):
        return base_eval_dir({**eval_cfg, **change}, adapter, CONCEPT, model, tmp_path / "out")

    base = where(tiny_adapter())
    assert base == where(tiny_adapter()) and base.parent == tmp_path / "cache"  # same weights, same settings: reused
    erased = tiny_adapter()
    erase(erased, ESD_FAST, CONCEPT, tmp_path / "erase", do_export=False)
    assert where(erased) != base  # same model.name, other weights
    assert where(tiny_adapter(), suites={"prompts": {"n": 3}}) != base  # other settings
    assert where(tiny_adapter(), base_cache=None) == tmp_path / "out" / "eval-base"


# ------------------------------------------------------------------------------------------------ what is never run
def test_checkpoints_hold_no_pickle_and_resume_never_unpickles(tmp_path, monkeypatch):
    import pickle

    from erase.training import CHECKPOINT_FILES

    train(ESD(**FAST_ESD), tiny_adapter(), CONCEPT, cfg(stop_after=2), tmp_path)
    (ckpt,) = checkpoints(tmp_path / "checkpoints")
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(CHECKPOINT_FILES)

    def refuse(*a, **k):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    r = train(ESD(**FAST_ESD), tiny_adapter(), CONCEPT, cfg(), tmp_path)
    assert r.resumed_from == 2 and r.steps == 4


def test_pickled_weights_and_custom_code_in_a_model_folder_are_refused_unrun(tmp_path, monkeypatch):
    import json

    marker = tmp_path / "code-ran"
    pickled = tmp_path / "pickled"
    tiny_pipeline("sd1").save_pretrained(pickled, safe_serialization=False)  # .bin weights only: pickles
    with pytest.raises(ModelLoadError, match="could not load"):
        load_pipeline(pickled)

    custom = save_tiny_pipeline("sd1", tmp_path / "custom")
    code = f"open({str(marker)!r}, 'w').write('ran')\nclass EvilUNet: pass\n"
    for where in (custom, custom / "unet"):
        (where / "evil_unet.py").write_text(code)
    index = json.loads((custom / "model_index.json").read_text())
    index["unet"] = ["evil_unet", "EvilUNet"]  # a component whose class is code shipped in the folder
    (custom / "model_index.json").write_text(json.dumps(index))
    monkeypatch.syspath_prepend(str(custom))  # even where the module would be importable
    with pytest.raises(ModelLoadError):
        load_pipeline(custom)
    index.update({"_class_name": "EvilPipeline", "unet": ["diffusers", "UNet2DConditionModel"]})
    (custom / "model_index.json").write_text(json.dumps(index))
    (custom / "pipeline.py").write_text(code)
    with pytest.raises(ModelLoadError, match="not a supported model family"):
        load_pipeline(custom)
    assert not marker.exists()
