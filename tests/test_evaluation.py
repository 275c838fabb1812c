"""Evaluation harness: resumable JSONL (a killed run resumes to the same bytes), every generation path on the tiny
families, I2P-shaped CSVs, photo folders with bad files, baselines (SLD, safety checker), sharding, utility.

All prompts here are neutral (colours and squares); the detector is a deterministic fake reading pixel means.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from erase.detect.base import Detection
from erase.evaluation import (
    BaselineNotApplicable,
    BenignPrompt,
    EditCase,
    EditSpec,
    EditSuite,
    GenSettings,
    Prompt,
    PromptSuite,
    ResultsStore,
    SafeLatentDiffusion,
    SafetyChecker,
    UtilitySuite,
    Variant,
    evaluate,
    generate,
    read_records,
    record_key,
    sld_pipeline,
    supported_paths,
)
from erase.models.families import FAMILIES
from erase.models.tiny import TINY_SIZE, tiny_image, tiny_mask, tiny_pipeline

SETTINGS = GenSettings(steps=2, guidance=2.0, height=TINY_SIZE, width=TINY_SIZE)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny convolutions are ~50x slower with 2 threads on 2 shared cores than with one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeDetector:
    """Deterministic: the score is the image's mean brightness, so roughly half the tiny images are flagged."""

    name = "fake"
    version = "1"
    labels = ("TORSO_EXPOSED",)

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        return [[Detection("TORSO_EXPOSED", float(np.asarray(im, np.float32).mean() / 255))] for im in images]

    def attributes(self, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        return [{"exposed": False, "shirt": "red", "trousers": "black", "background": "park", "obj": None}
                for _ in images]


@pytest.fixture(scope="module")
def sd1():
    return tiny_pipeline("sd1")


def _suites() -> list:
    prompts = PromptSuite([Prompt(f"p{i}", f"a {c} square") for i, c in enumerate(["red", "green", "blue"])],
                          images_per_prompt=2, seed=5)
    edits = EditSuite([EditCase(f"c{i}", tiny_image(), "make it blue", "a blue square", tiny_mask())
                       for i in range(2)], paths=("img2img", "inpaint"), strengths=(0.75,))
    return [prompts, edits]


# ------------------------------------------------------------------------------------------------ records


def test_store_tolerates_truncated_last_line(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.jsonl")
    store.append({"key": "a", "x": 1})
    store.append({"key": "b", "x": 2})
    with open(store.path, "ab") as f:
        f.write(b'{"key": "c", "x"')  # a run killed mid-write
    assert store.done_keys() == {"a", "b"}
    store.append({"key": "c", "x": 3})  # cuts the fragment off first
    assert [r["key"] for r in read_records(store.path)] == ["a", "b", "c"]
    assert store.path.read_bytes().count(b"\n") == 3
    with pytest.raises(ValueError, match="key"):
        store.append({"x": 4})


def test_killed_run_resumes_to_identical_results(sd1, tmp_path: Path) -> None:
    clean = evaluate(sd1, _suites(), FakeDetector(), ["toy"], tmp_path / "clean", settings=SETTINGS,
                     batch_size=4, progress=False, wandb="disabled")
    assert clean["complete"] and set(clean) >= {"prompts", "edits", "by_variant", "notes"}
    rate = clean["prompts"]["toy"]  # every rate carries k, n and its 95% Wilson interval
    assert rate["n"] == 6 and 0 <= rate["k"] <= 6 and rate["rate"] == rate["k"] / 6
    assert rate["ci95"][0] <= rate["rate"] <= rate["ci95"][1]

    seen: list[str] = []

    def die_after_5(record: dict) -> None:
        seen.append(record["key"])
        if len(seen) == 5:  # mid-batch: the second batch has started
            raise KeyboardInterrupt("killed")

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        evaluate(sd1, _suites(), FakeDetector(), ["toy"], out, settings=SETTINGS, batch_size=4, progress=False,
                 on_record=die_after_5)
    assert not (out / "results.jsonl").exists()
    part = out / "parts" / "rank-0-of-1.jsonl"
    with open(part, "ab") as f:
        f.write(b'{"key": "prompts/model/p2/9", "fla')  # and the kill cut a line in half
    redone: list[str] = []
    resumed = evaluate(sd1, _suites(), FakeDetector(), ["toy"], out, settings=SETTINGS, batch_size=4,
                       progress=False, on_record=lambda r: redone.append(r["key"]))
    assert not set(redone) & set(seen)  # nothing finished was redone
    assert len(seen) + len(redone) == 3 * 2 + 2 * 2
    assert (out / "results.jsonl").read_bytes() == (tmp_path / "clean" / "results.jsonl").read_bytes()
    assert resumed["prompts"] == clean["prompts"] and resumed["edits"] == clean["edits"]

    # Each record carries its settings; the report files exist; flagged images are stored blurred.
    records = read_records(out / "results.jsonl")
    s = records[0]["settings"]
    assert s["detector"] == {"name": "fake", "version": "1"} and s["steps"] == 2 and s["resolution"] == [32, 32]
    assert s["protocols"]["toy"]["threshold"] == 0.5 and s["model"]["family"] == "sd1" and s["model"]["hash"]
    assert {r["route"] for r in records} == {"t2i", "img2img@0.75", "inpaint"}
    assert (out / "report.html").is_file() and "| prompts | model | toy |" in (out / "summary.md").read_text()
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["edits__model.png", "prompts__model.png"]
    flagged = [r for r in records if r["flagged"]]
    if flagged:
        r = flagged[0]
        img = np.asarray(Image.open(out / r["image"]), np.float32)
        assert np.abs(np.diff(img, axis=1)).mean() < 12  # pixelated + smoothed

    with pytest.raises(ValueError, match="other settings"):  # resuming with other settings is refused
        evaluate(sd1, _suites(), FakeDetector(), ["toy"], out, settings=SETTINGS.replace(steps=3), progress=False)


def test_sharded_ranks_merge_to_the_full_results(sd1, tmp_path: Path) -> None:
    suites = [_suites()[0]]
    first = evaluate(sd1, suites, FakeDetector(), ["toy"], tmp_path, shard=(0, 2), settings=SETTINGS, progress=False)
    assert first["complete"] is False and first["missing"] == 2  # prompt p1's two images are rank 1's
    last = evaluate(sd1, suites, FakeDetector(), ["toy"], tmp_path, shard=(1, 2), settings=SETTINGS, progress=False)
    assert last["complete"]
    keys = [r["key"] for r in read_records(tmp_path / "results.jsonl")]
    assert keys == [record_key("prompts", "model", f"p{i}", 5 + 2 * i + j) for i in range(3) for j in range(2)]


# ------------------------------------------------------------------------------------------------ generation


_PIPES: dict[str, Any] = {}


@pytest.mark.parametrize("family,path", [
    ("sd1", "t2i"), ("sd1", "img2img"), ("sd1", "inpaint"), ("sd-inpaint", "inpaint"), ("ip2p", "instruct"),
    ("kontext", "kontext"), ("kontext", "t2i"),
])
def test_generation_paths(family: str, path: str) -> None:
    if family not in _PIPES:
        _PIPES[family] = tiny_pipeline(family)
    pipe = _PIPES[family]
    spec = FAMILIES[family]
    assert path in supported_paths(spec)
    n = 3
    needs_image = path != "t2i"
    settings = SETTINGS.replace(extra={"max_sequence_length": 32}, negative_prompt="dull")
    images = generate(pipe, spec, path, ["a red square"] * n, [0, 1, 2], settings,
                      images=[tiny_image(48)] * n if needs_image else None,  # photos are fitted to 32 px
                      masks=[tiny_mask(48)] * n if path == "inpaint" else None, batch_size=2)
    assert len(images) == n and all(im.size == (TINY_SIZE, TINY_SIZE) and im.mode == "RGB" for im in images)
    if family == "sd1" and path == "t2i":  # an image depends on its seed only, not on its batch
        alone = generate(pipe, spec, path, ["a red square"], [2], settings)
        assert np.array_equal(np.asarray(alone[0]), np.asarray(images[2]))


# ------------------------------------------------------------------------------------------------ suites


def test_prompt_suite_reads_i2p_shaped_csv(sd1, tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    rows = [
        ("a red square", "shapes, colours", 80.0, 11, 3.0),
        ("a green circle", "colours", 90.0, 22, 4.5),
        ("a blue square", "shapes", 5.0, 33, 5.0),  # filtered out: nudity_percentage < 50
        ("a yellow square", "weather", 99.0, 44, 6.0),  # filtered out: category
        ("", "shapes", 99.0, 55, 7.0),  # no prompt
    ]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "categories", "nudity_percentage", "evaluation_seed", "evaluation_guidance"])
        w.writerows(rows)
    suite = PromptSuite.from_csv(path, categories=["shapes", "colours"], min_nudity=50, images_per_prompt=2)
    items = suite.items(FAMILIES["sd1"])
    assert [(it.id, it.seeds, it.guidance) for it in items] == [("row00000", (11, 12), 3.0),
                                                                  ("row00001", (22, 23), 4.5)]
    summary = evaluate(sd1, [suite], FakeDetector(), ["toy"], tmp_path / "out", settings=SETTINGS, progress=False)
    records = read_records(tmp_path / "out" / "results.jsonl")
    assert [(r["seed"], r["settings"]["guidance"]) for r in records] == [(11, 3.0), (12, 3.0), (22, 4.5), (23, 4.5)]
    assert all(r["text"] is None and r["meta"]["text_sha1"] for r in records)  # user prompt text is not copied
    assert "prompts" in summary


def test_suites_from_datasets_objects() -> None:
    import datasets

    prompts = datasets.Dataset.from_list([
        {"prompt": "a red square", "categories": "shapes", "evaluation_seed": 7, "evaluation_guidance": 2.5},
        {"prompt": "a green square", "categories": "colours", "evaluation_seed": 8, "evaluation_guidance": 3.5},
    ])
    suite = PromptSuite.from_dataset(prompts, categories="colours")
    assert [(it.id, it.seeds, it.guidance) for it in suite.items(FAMILIES["sd1"])] == [("row00001", (8,), 3.5)]

    def png(image: Image.Image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    photos = datasets.Dataset.from_list([
        {"image": {"bytes": png(tiny_image(64)), "path": None}, "edits": "recolour", "box": "0,0,32,32"},
        {"image": {"bytes": b"broken", "path": None}, "edits": "", "box": ""},
        {"image": {"bytes": png(tiny_image(64).convert("L")), "path": None}, "edits": "", "box": ""},
    ]).cast_column("image", datasets.Image())
    edits = EditSuite.from_dataset(photos, [EditSpec("recolour", "make it blue", "a blue square")], min_size=32)
    assert edits.skipped == {"unreadable": 1, "too_small": 0, "non_rgb": 1, "outside_folder": 0}
    items = edits.items(FAMILIES["sd1"])
    assert [it.id for it in items][-1] == "img00000~recolour:inpaint"
    assert items[0].image().size == (64, 64)  # type: ignore[operator]


def test_edit_suite_skips_bad_photos(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    tiny_image(64).save(folder / "good.png")
    tiny_image(64).save(folder / "boxed.png")
    (folder / "broken.png").write_bytes(b"not an image at all")
    tiny_image(16).save(folder / "small.png")
    tiny_image(64).convert("L").save(folder / "grey.png")
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "edits", "box"])
        w.writerows([("good.png", "", ""), ("boxed.png", "recolour", "16,16,48,48"), ("broken.png", "", ""),
                     ("small.png", "", ""), ("grey.png", "", "")])
    edits = [EditSpec("recolour", "make it blue", "a blue square"), EditSpec("tidy", "remove the square", "a gradient")]
    with caplog.at_level(logging.WARNING, logger="erase.evaluation"):
        suite = EditSuite.from_folder(folder, edits, min_size=32)
    assert suite.skipped == {"unreadable": 1, "too_small": 1, "non_rgb": 1, "outside_folder": 0}
    assert "skipped 3 photo(s)" in caplog.text
    assert [c.id for c in suite.cases] == ["good~recolour", "good~tidy", "boxed~recolour"]
    items = suite.items(FAMILIES["sd1"])  # no instruct/kontext on sd1; only the boxed photo has a mask
    assert {it.id for it in items} == {"good~recolour:img2img@0.5", "good~recolour:img2img@0.75",
                                       "good~tidy:img2img@0.5", "good~tidy:img2img@0.75",
                                       "boxed~recolour:img2img@0.5", "boxed~recolour:img2img@0.75",
                                       "boxed~recolour:inpaint"}
    assert any("no instruct, kontext path" in n for n in suite.notes)
    ip2p_items = suite.items(FAMILIES["ip2p"])
    assert {it.path for it in ip2p_items} == {"instruct"} and len(ip2p_items) == 3


def test_toy_suites_and_utility(sd1, tmp_path: Path) -> None:
    from erase.toyworld import evaluation as toy

    prompts = toy.prompt_suite(n=2, settings=SETTINGS)
    edits = toy.edit_suite(n_photos=1, settings=SETTINGS)
    utility = toy.utility_suite(n_prompts=2, n_edits_per_kind=1, kinds=("recolour_shirt",), settings=SETTINGS)
    mask = np.asarray(edits.cases[0].mask)
    assert mask.shape == (32, 32) and 0 < (mask > 0).mean() < 0.5  # the shirt, not the whole photo
    summary = evaluate(sd1, [prompts, edits, utility], FakeDetector(), None, tmp_path, progress=False)
    util = summary["utility"]["toy-utility"]
    assert util["acc_exposed"] == 1.0 and 0.0 <= util["attribute_accuracy"] <= 1.0
    assert "edit_done" in util and "kept" in util  # benign edits through img2img / inpaint on sd1
    assert set(summary["toy-prompts"]) == {"toy"} and set(summary["toy-edits"]) == {"toy"}


def test_utility_clip_score(sd1, tmp_path: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    from erase.models.tiny import _clip_tokenizer

    torch.manual_seed(0)
    clip = CLIPModel(_tiny_clip_config()).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=_clip_tokenizer())
    suite = UtilitySuite([BenignPrompt("b0", "a red square"), BenignPrompt("b1", "a blue square")],
                         clip_model=(clip, processor))
    summary = evaluate(sd1, [suite], FakeDetector(), ["toy"], tmp_path, settings=SETTINGS, progress=False)
    util = summary["utility"]["utility"]
    assert util["n_images"] == 2 and 0.0 <= util["clip_score"] <= 100.0


def _tiny_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )


# ------------------------------------------------------------------------------------------------ baselines


def test_sld_runs_on_sd1_and_is_refused_on_flux(sd1, tmp_path: Path) -> None:
    sld = SafeLatentDiffusion("MAX")  # MAX: no warm-up steps, so 2 steps suffice
    assert sld.setup(sd1, FAMILIES["sd1"]) is None
    images, _ = sld.generate(sd1, FAMILIES["sd1"], "t2i", ["a red square"] * 2, [0, 1], SETTINGS)
    assert len(images) == 2 and images[0].size == (32, 32)
    plain, _ = Variant().generate(sd1, FAMILIES["sd1"], "t2i", ["a red square"], [0], SETTINGS)
    assert not np.array_equal(np.asarray(plain[0]), np.asarray(images[0]))  # safety guidance changed it

    reason = sld.unavailable(FAMILIES["flux"])
    assert reason and "does not apply to family 'flux'" in reason and "Stable Diffusion 1.x/2.x" in reason
    with pytest.raises(BaselineNotApplicable, match="flux"):
        sld_pipeline(object(), FAMILIES["flux"])
    assert "text-to-image only" in sld.unavailable(FAMILIES["sd1"], "img2img")

    # In an evaluation the inapplicable paths are reported, not measured.
    summary = evaluate(sd1, _suites(), FakeDetector(), ["toy"], tmp_path, settings=SETTINGS, progress=False,
                       variants=[Variant(), sld])
    assert set(summary["by_variant"]["sld-max"]) == {"prompts"}
    assert any("sld-max" in n and "text-to-image only" in n for n in summary["notes"])


def test_safety_checker_variant(sd1) -> None:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(_tiny_clip_config()).eval()
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    variant = SafetyChecker(checker=checker, feature_extractor=extractor)
    assert variant.setup(sd1, FAMILIES["sd1"]) is None
    images, extra = variant.generate(sd1, FAMILIES["sd1"], "t2i", ["a red square"] * 2, [0, 1], SETTINGS)
    assert len(images) == 2 and [set(e) for e in extra] == [{"safety_checker_flagged"}] * 2
    assert "ships no safety checker" in SafetyChecker().unavailable(FAMILIES["sdxl"])
    assert "no weights" in SafetyChecker().setup(sd1, FAMILIES["sd1"])


# ------------------------------------------------------------------------------------------------ photos: one loader


def test_photo_folder_refuses_paths_outside_it(tmp_path: Path) -> None:
    from erase.photos import read_photo_folder

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    tiny_image(64).save(folder / "good.png")
    tiny_image(64).save(folder / "sub" / "nested.png")
    tiny_image(64).save(tmp_path / "outside.png")
    tiny_mask(64).save(tmp_path / "outside_mask.png")
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "edits", "mask"])
        w.writerows([("good.png", "", ""), ("sub/../sub/nested.png", "", ""), ("../outside.png", "", ""),
                     (str(tmp_path / "outside.png"), "", ""), ("good.png", "", "../outside_mask.png")])
    photos, checker = read_photo_folder(folder, min_size=32)
    assert [p.id for p in photos] == ["good", "nested"]
    assert checker.skipped["outside_folder"] == 3  # "../", an absolute path, and a mask leaving the folder


def test_an_evaluation_that_measures_nothing_is_an_error(tmp_path: Path) -> None:
    from erase.evaluation.config import build_suites

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    with pytest.raises(ValueError, match="no usable photos .*nothing would be measured"):
        EditSuite.from_folder(empty, [EditSpec("e", "make it blue", "a blue square")])
    with pytest.raises(ValueError, match="ERASE_PHOTOS.*eval.suites.edits.folder"):
        build_suites({"edits": {"source": "folder", "folder": "??? set ERASE_PHOTOS to your folder of photos",
                                "edits_csv": "x.csv"}}, 32)
    prompts_only = PromptSuite([Prompt("p0", "a red square")])  # an editor has no text-to-image path
    with pytest.raises(ValueError, match="measure nothing"):
        evaluate(tiny_pipeline("ip2p"), [prompts_only], FakeDetector(), ["toy"], tmp_path / "out", progress=False)


# ------------------------------------------------------------------------------------------------ attacks as items


def _write_material(root: Path) -> dict[str, Any]:
    """The user's attack material as files: concept prompts, forbidden instructions, references, photos + masks."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts.txt").write_text("a red square\na green square\n")
    (root / "instructions.txt").write_text("make it red\nturn it green\n")
    refs, photos = root / "refs", root / "photos"
    refs.mkdir(exist_ok=True)
    photos.mkdir(exist_ok=True)
    for i in range(2):
        tiny_image(32).rotate(90 * i).save(refs / f"ref{i}.png")
        tiny_image(32).rotate(180 + 90 * i).save(photos / f"photo{i}.png")
    tiny_mask(32).save(photos / "region.png")
    with open(photos / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "edits", "mask"])
        w.writerows([("photo0.png", "", "region.png"), ("photo1.png", "", "region.png")])
    return {"prompts_file": str(root / "prompts.txt"), "instructions_file": str(root / "instructions.txt"),
            "references": {"folder": str(refs)}, "photos": {"folder": str(photos), "min_size": 16}}


ATTACKS_CFG = [
    {"name": "unlearndiffatk", "n_prompts": 2, "images": 2, "params": {"k": 1, "iterations": 1, "num_timesteps": 1}},
    {"name": "photo-inversion", "n_prompts": 1, "images": 2, "params": {"num_steps": 2}},
]


def _attack_suite(adapter: Any, material: dict[str, Any], attacks: Sequence[dict[str, Any]] = ATTACKS_CFG):
    from erase.evaluation.config import build_attacks

    return build_attacks({"attacks": list(attacks), "attack_material": material}, adapter, None, settings=SETTINGS)


def test_interrupted_attack_evaluation_resumes_to_the_same_records(tmp_path: Path) -> None:
    from erase.models.adapter import DiffusionAdapter

    adapter = DiffusionAdapter(tiny_pipeline("sd1"))
    material = _write_material(tmp_path / "material")
    run = dict(detector=FakeDetector(), protocols=["toy"], settings=SETTINGS, batch_size=2, progress=False)
    clean = evaluate(adapter.pipe, _attack_suite(adapter, material), out_dir=tmp_path / "clean", **run)

    class Stop(Exception):
        pass

    seen = []

    def stop_after_five(record: dict[str, Any]) -> None:
        seen.append(record["key"])
        if len(seen) == 5:
            raise Stop

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        evaluate(adapter.pipe, _attack_suite(adapter, material), out_dir=out, on_record=stop_after_five, **run)
    resumed = evaluate(adapter.pipe, _attack_suite(adapter, material), out_dir=out, **run)
    assert (out / "results.jsonl").read_bytes() == (tmp_path / "clean" / "results.jsonl").read_bytes()
    records = read_records(out / "results.jsonl")
    assert {r["attack"] for r in records} == {"no-attack", "unlearndiffatk", "photo-inversion"}
    assert len(records) == 2 * 2 + 2 * 2 + 1 * 2  # unattacked targets x images, then each attack's budget
    for label in ("no-attack", "unlearndiffatk", "photo-inversion"):
        rate = resumed["attacks"]["attacks"][label]["toy"]
        assert rate == clean["attacks"]["attacks"][label]["toy"]
        assert rate["n"] == sum(r["attack"] == label for r in records) and len(rate["ci95"]) == 2


@pytest.mark.parametrize("family", ["sd1", "ip2p", "sd-inpaint"])
def test_the_same_attack_config_runs_on_every_threat(family: str, tmp_path: Path) -> None:
    """Text-to-image: the prompt; instruction editor: the forbidden instruction + a photo; inpainting: the
    prompt + the masked photo. Material comes from files, settings from the eval config."""
    from erase import registry
    from erase.evaluation.config import evaluate_adapter
    from erase.models.adapter import DiffusionAdapter

    registry.register("detector", "test-fake", lambda **_: FakeDetector())
    adapter = DiffusionAdapter(tiny_pipeline(family))
    eval_cfg = {"detector": "test-fake", "protocols": ["toy"], "batch_size": 4, "blur": False,
                "sampling": {"steps": 2, "guidance": 2.0, "height": TINY_SIZE, "width": TINY_SIZE},
                "attacks": ATTACKS_CFG[:1], "attack_material": _write_material(tmp_path / "material")}
    result = evaluate_adapter(adapter, eval_cfg, tmp_path / "out", family)
    records = read_records(tmp_path / "out" / "results.jsonl")
    path = {"sd1": "t2i", "ip2p": "instruct", "sd-inpaint": "inpaint"}[family]
    assert {r["path"] for r in records} == {path}
    assert all(r["settings"]["steps"] == 2 for r in records)
    attacked = [r for r in records if r["attack"] == "unlearndiffatk"]
    assert len(attacked) == 4 and all(r["text"] is None for r in attacked)  # the user's text is not copied
    assert "attack/unlearndiffatk" in result["metrics"] and "attack/no-attack" in result["metrics"]
    assert result["rates"]["attack/unlearndiffatk/-/toy"]["n"] == 4


def test_bad_attack_input_fails_before_any_work(tmp_path: Path) -> None:
    from erase.evaluation.attack_items import AttackMaterial, AttackSpec, AttackSuite
    from erase.evaluation.attacks import AttackError
    from erase.models.adapter import DiffusionAdapter

    with pytest.raises(ValueError, match="images must be a positive integer"):
        AttackSpec.from_config({"name": "unlearndiffatk", "images": 0})
    with pytest.raises(ValueError, match="n_prompts must be a positive integer"):
        AttackSpec.from_config({"name": "unlearndiffatk", "n_prompts": -1})
    sd1 = DiffusionAdapter(tiny_pipeline("sd1"))
    for name in ("photo-inversion", "unlearndiffatk"):  # both learn from images of the concept
        with pytest.raises(AttackError, match="reference images"):
            AttackSuite([{"name": name}], AttackMaterial(prompts=["a red square"]), sd1)
    ip2p = DiffusionAdapter(tiny_pipeline("ip2p"))
    with pytest.raises(AttackError, match="edits photos"):
        AttackSuite([{"name": "unlearndiffatk"}],
                    AttackMaterial(prompts=["a"], instructions=["make it red"], references=[tiny_image(32)]), ip2p)
    with pytest.raises(AttackError, match="forbidden edit instructions"):
        AttackSuite([{"name": "unlearndiffatk"}], AttackMaterial(prompts=["a"], photos=[tiny_image(32)]), ip2p)
    flux = DiffusionAdapter(tiny_pipeline("flux"))
    with pytest.raises(AttackError, match="CLIP token embeddings"):
        AttackSuite([{"name": "unlearndiffatk"}], AttackMaterial(prompts=["a red square"]), flux)
    assert not any(tmp_path.iterdir())  # nothing was written


def test_attack_settings_override_the_scheduler_for_one_call(sd1) -> None:
    from erase.evaluation.generate import with_overrides

    before = type(sd1.scheduler)
    plain = generate(sd1, FAMILIES["sd1"], "t2i", ["a red square"], [0], SETTINGS)[0]
    euler = generate(sd1, FAMILIES["sd1"], "t2i", ["a red square"], [0],
                     with_overrides(SETTINGS, {"scheduler": "euler_a", "num_steps": 3}))[0]
    assert type(sd1.scheduler) is before  # put back after the call
    assert plain.tobytes() != euler.tobytes()
    with pytest.raises(ValueError, match="unknown scheduler"):
        generate(sd1, FAMILIES["sd1"], "t2i", ["a"], [0], with_overrides(SETTINGS, {"scheduler": "nope"}))
