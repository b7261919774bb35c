"""Run lm-evaluation-harness tasks on an in-memory model, offline.

Unlearning must not break what a model knows outside the forget set; standard benchmarks
(and small local ones) measure that. This bridge wraps a Hugging Face model already in memory
with lm_eval's ``HFLM`` and runs ``lm_eval.simple_evaluate`` on tasks defined by local YAML
files with local data, so nothing is downloaded (importing :mod:`forgetkit` switches the Hugging
Face libraries offline). The result is reduced to plain numbers per task and metric.
"""

from __future__ import annotations

import logging
import math
import numbers
from pathlib import Path

from forgetkit.errors import ConfigError


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    include_path: str | Path | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    device: str = "cpu",
) -> dict:
    """Evaluate ``model`` on lm_eval ``tasks``: ``{task: {metric: value}}``.

    ``model`` is a causal LM (``PreTrainedModel``); a peft ``PeftModel`` has its adapters merged
    into its base model first (``merge_and_unload``, which changes the base weights in place).
    The model is moved to ``device``. Tasks are looked up in the YAML files under
    ``include_path`` only, or among lm_eval's built-in tasks when ``include_path`` is None
    (indexing the built-in tasks takes lm_eval ~20 s; offline they need locally cached data).
    ``limit`` caps the number of documents per task.

    Metric names are lm_eval's, e.g. ``acc,none``, ``acc_norm,none``, ``acc_stderr,none``, and
    ``sample_len`` is the number of documents evaluated; entries that are not finite numbers
    (the task's name and alias, ``N/A`` stderrs) are left out.

    Raises :class:`ConfigError` for a task name that the task index does not know.
    """
    try:
        import lm_eval
    except ImportError:
        raise ConfigError("--lm-eval-tasks needs lm-evaluation-harness: pip install 'forgetkit[lm-eval]'") from None
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(
        include_path=str(include_path) if include_path else None, include_defaults=include_path is None
    )
    known = set(task_manager.all_tasks)
    for task in tasks:
        if task not in known:
            where = f"include path '{include_path}'" if include_path else "lm_eval's built-in tasks"
            raise ConfigError(f"unknown lm_eval task '{task}' (not found in {where})")

    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = model.to(device)

    lm_eval_logger = logging.getLogger("lm_eval")
    previous_level = lm_eval_logger.level
    lm_eval_logger.setLevel(logging.ERROR)
    try:
        hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        output = lm_eval.simple_evaluate(
            model=hflm, tasks=list(tasks), task_manager=task_manager, limit=limit, log_samples=False
        )
    finally:
        lm_eval_logger.setLevel(previous_level)

    return {
        task: {
            name: float(value)
            for name, value in metrics.items()
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        }
        for task, metrics in output["results"].items()
    }
