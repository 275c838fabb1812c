"""Evaluation: how much of an erased concept still leaks, through every path a model offers, resumably.

    from erase.evaluation import evaluate, PromptSuite, EditSuite, UtilitySuite
    summary = evaluate(model, [PromptSuite.toy(), EditSuite.toy(), UtilitySuite.toy()], detector, ["toy"], "out")
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
    toy_settings,
)
from erase.evaluation.harness import evaluate, merge, model_fingerprint
from erase.evaluation.records import ResultsStore, read_records, record_key, write_sorted
from erase.evaluation.suites import (
    BenignPrompt,
    EditCase,
    EditSpec,
    EditSuite,
    Item,
    Photo,
    Prompt,
    PromptSuite,
    Suite,
    UtilitySuite,
)

__all__ = [
    "PATHS", "BaselineNotApplicable", "BenignPrompt", "EditCase", "EditSpec", "EditSuite", "GenSettings", "Item",
    "ModelAsIs", "NegativePrompt", "Photo", "Prompt", "PromptSuite", "ResultsStore", "SafeLatentDiffusion",
    "SafetyChecker", "Suite", "UtilitySuite", "Variant", "call_pipeline", "evaluate", "generate", "merge",
    "model_fingerprint", "pipeline_for", "read_records", "record_key", "sld_pipeline", "supported_paths",
    "toy_settings", "write_sorted",
]
