"""erase: remove concepts from the weights of diffusion models, and measure what still leaks.

The Python API runs the same composed configs as the `erase` command (configs/), without a command line:

    import erase

    run = erase.erase(method="toy_esd", out_dir="runs/toy", overrides=["method.train.steps=50"])
    print(run["method"], run["export"]["pipeline"])           # esd-x, the hardened checkpoint's folder
    report = erase.evaluate(run["export"]["pipeline"], eval="toy", out_dir="runs/toy-eval")
    print(report["evaluation"]["metrics"])                     # leakage and utility, every rate with n and interval

`erase(...)` takes the config names of the CLI (model=, method=, concept=, eval=, experiment=) and any CLI override;
`evaluate(...)` takes a model config name, a local folder (an export, any diffusers pipeline folder), a hub id or a
loaded pipeline / DiffusionAdapter. Both return the run's summary (also written to out_dir/summary.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

__all__ = ["erase", "evaluate", "compose_config", "__version__"]


def compose_config(overrides: Sequence[str] = (), out_dir: str | Path | None = None):
    """The composed config the CLI would run with these overrides (Hydra's compose API; configs/ of this package)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from erase.configs import CONFIGS

    args = list(overrides) + ([f"out_dir={Path(out_dir).expanduser().resolve()}"] if out_dir is not None else [])
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app or test that composed already
        return compose("config", overrides=args)
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("config", overrides=args)


def _model_overrides(model: str | Path) -> list[str]:
    """A model config name ("toy", "sd15"), or a local pipeline folder / hub id: then the family is read from the
    pipeline and the size from the model."""
    from erase.configs import CONFIGS

    name = str(model)
    if (CONFIGS / "model" / f"{name}.yaml").is_file():
        return [f"model={name}"]
    local = Path(name).expanduser()
    path = str(local.resolve()) if local.exists() else name
    return ["model=toy", f"model.path={path}", f"model.name={Path(path).name or path}", "model.family=null",
            "model.size=null"]


def _group_overrides(**groups: str | None) -> list[str]:
    out = []
    for group, name in groups.items():
        if name is None:
            continue
        out.append(f"+experiment={name}" if group == "experiment" else f"{group}={name}")
    return out


def erase(
    model: str = "toy",
    method: str = "toy_esd",
    concept: str = "toy_exposed",
    *,
    out_dir: str | Path,
    eval: str = "none",  # noqa: A002 - the CLI's group name
    experiment: str | None = None,
    overrides: Sequence[str] = (),
    export: bool = True,
) -> dict[str, Any]:
    """Erase `concept` from `model` (a model config name, a local pipeline folder or a hub id) with `method`
    (config names, as on the command line), export the hardened
    checkpoint under out_dir/export, and evaluate before and after when `eval` names suites (default: none)."""
    from erase.cli import run_task

    groups = [*_model_overrides(model), *_group_overrides(method=method, concept=concept, eval=eval, experiment=experiment)]
    task = "erase" if eval == "none" else "erase_and_eval"
    cfg = compose_config([*groups, f"task={task}", f"export={str(bool(export)).lower()}", *overrides], out_dir)
    return run_task(cfg)


def evaluate(
    model_or_path: Any,
    eval: str = "toy",  # noqa: A002
    *,
    out_dir: str | Path,
    concept: str = "toy_exposed",
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Evaluate a model as given: a model config name ("toy"), a local pipeline folder (an erase export or any
    diffusers folder, e.g. another project's erased checkpoint), a hub id, or a loaded pipeline / DiffusionAdapter.
    Results land in out_dir/eval (records, report) and out_dir/summary.json."""
    if isinstance(model_or_path, (str, Path)):
        model = _model_overrides(model_or_path)
        from erase.cli import run_task

        cfg = compose_config([*model, f"eval={eval}", f"concept={concept}", "task=evaluate", *overrides], out_dir)
        return run_task(cfg)
    return _evaluate_loaded(model_or_path, eval, out_dir, concept, overrides)


def _evaluate_loaded(model: Any, eval: str, out_dir: str | Path, concept: str, overrides: Sequence[str]) -> dict[str, Any]:  # noqa: A002
    """A pipeline or adapter already in memory: the same evaluation, without loading anything."""
    import json

    from omegaconf import OmegaConf

    from erase.concept import Concept
    from erase.configs import check_config
    from erase.evaluation.config import evaluate_adapter
    from erase.models.adapter import DiffusionAdapter
    from erase.models.families import family_of

    adapter = model if isinstance(model, DiffusionAdapter) else DiffusionAdapter(model, family_of(model))
    cfg = compose_config([f"eval={eval}", f"concept={concept}", "task=evaluate", *overrides], out_dir)
    check_config(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = type(adapter.pipe).__name__
    result = evaluate_adapter(adapter, OmegaConf.to_container(cfg.eval, resolve=True), out / "eval", name,
                              Concept.from_config(OmegaConf.to_container(cfg.concept, resolve=True)), baselines=True)
    summary = {"model": name, "concept": cfg.concept.id, "evaluation": result}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
