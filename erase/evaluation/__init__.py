"""Evaluation: how much of an erased concept still leaks, through every path a model offers, resumably.

    from erase.evaluation import evaluate, PromptSuite, Prompt, GenSettings
    suite = PromptSuite([Prompt("p0", "a red square")], images_per_prompt=4)
    summary = evaluate(model, [suite], detector, ["rece"], "out", settings=GenSettings(steps=30))

Suites (prompt, edit, utility, attacks) are all item producers of one engine (erase.evaluation.harness); named
pieces (detectors, sampling presets, a plugin's suites) come from erase.registry.
"""

from erase.evaluation.baselines import (
    BaselineNotApplicable,
    ModelAsIs,
    NegativePrompt,
    SafeLatentDiffusion,
    SafetyChecker,
    Variant,
    sld_pipeline,
)
from erase.evaluation.generate import (
    PATHS,
    GenSettings,
    call_pipeline,
    generate,
    pipeline_for,
    supported_paths,
    settings_from,
    with_overrides,
)
from erase.evaluation.harness import evaluate, merge, model_fingerprint
from erase.evaluation.records import ResultsStore, read_records, record_key, write_sorted
from erase.evaluation.attack_items import AttackMaterial, AttackSpec, AttackSuite
from erase.evaluation.edit_suites import EditCase, EditSpec, EditSuite, Photo
from erase.evaluation.items import Item, Suite, rate_record
from erase.evaluation.prompt_suites import Prompt, PromptSuite
from erase.evaluation.utility import BenignPrompt, UtilitySuite

__all__ = [
    "PATHS", "AttackMaterial", "AttackSpec", "AttackSuite", "BaselineNotApplicable", "BenignPrompt", "EditCase", "EditSpec", "EditSuite", "GenSettings", "Item",
    "ModelAsIs", "NegativePrompt", "Photo", "Prompt", "PromptSuite", "ResultsStore", "SafeLatentDiffusion",
    "SafetyChecker", "Suite", "UtilitySuite", "Variant", "call_pipeline", "evaluate", "generate", "merge",
    "model_fingerprint", "pipeline_for", "read_records", "record_key", "sld_pipeline", "supported_paths",
    "rate_record", "settings_from", "with_overrides", "write_sorted",
]
