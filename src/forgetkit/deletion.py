"""``forgetkit forget``: one deletion request, one command, no oracle and no calibration set.

A deployer has the model (a Hugging Face directory, or a GGUF file as llama.cpp and Ollama serve it), the
records to delete and the records to keep. :func:`forget` runs the oracle-free recipe forgetkit measured
(``configs/unlearn/deletion.yaml``, or a method's shipped recipe, with ``until=indistinguishable`` against
counterfactual twins of the forget records, ``criterion.reference=twins``), then reads the verdict off the
criterion's kept check: the step, the forget-vs-twins AUC and its tolerance, and the retain sample's
probability against the model's own at the start. A GGUF model is imported once into the cache
(``FORGETKIT_CACHE``, else ``$XDG_CACHE_HOME/forgetkit``, else ``~/.cache/forgetkit``), keyed by the file's
SHA-256, and the audit record names that directory.

The request is an ordinary ``unlearn`` request (``request.finish`` writes its output, audit record and ledger
row), so ``forgetkit audit`` and ``forgetkit export --gguf`` follow it as any other.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from forgetkit.request import AUTO_CALIBRATION, UnlearnRequest, UnlearnResult, recipe_config
from forgetkit.unlearn import run_unlearn

DEFAULT_RECIPE = "deletion"  # configs/unlearn/deletion.yaml: the oracle-free recipe measured (docs/results.md)
GGUF_SUFFIX = ".gguf"


def cache_dir() -> Path:
    """Where imported GGUF models are kept: ``FORGETKIT_CACHE``, else ``$XDG_CACHE_HOME/forgetkit``, else
    ``~/.cache/forgetkit``."""
    if os.environ.get("FORGETKIT_CACHE"):
        return Path(os.environ["FORGETKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "forgetkit"


def model_directory(model: str, quiet: bool = False) -> tuple[Path, float]:
    """``model`` as a Hugging Face directory: itself, or a GGUF file's import in the cache (made on first use),
    and the seconds the import took (0 when reused or not a GGUF file)."""
    path = Path(model)
    if path.suffix.lower() != GGUF_SUFFIX:
        return path, 0.0
    from forgetkit.checks import input_file
    from forgetkit.models.gguf import file_sha256, import_gguf

    input_file(model, "--model")
    target = cache_dir() / "models" / file_sha256(path)[:16]
    if (target / "config.json").is_file():
        return target, 0.0
    t0 = time.perf_counter()
    if not quiet:
        print(f"Importing {path} into {target} (once per file)")
    import_gguf(path, target)
    return target, time.perf_counter() - t0


@dataclass
class DeletionVerdict:
    """What ``forgetkit forget`` prints and returns: whether the forget set became indistinguishable from its
    twins, where, and at what cost to the retain set; and where the time went."""

    reached: bool
    verdict: str  # the criterion's words ("indistinguishable at step k …" / "not indistinguishable: best AUC …")
    step: int | None
    auc: float | None
    tolerance: float
    retain_probability_start: float | None
    retain_probability: float | None
    total_s: float
    import_s: float
    train_s: float  # the optimiser's steps
    checks_s: float  # the criterion's checks
    other_s: float  # loading, tokenising, writing the output, the audit record and the ledger row

    @property
    def retain_kept(self) -> float | None:
        if not self.retain_probability_start or self.retain_probability is None:
            return None
        return self.retain_probability / self.retain_probability_start

    @classmethod
    def of(cls, result: UnlearnResult, total_s: float, import_s: float) -> DeletionVerdict:
        c = result.summary.criterion
        checks_s = c.checks_s or 0.0
        wall = result.summary.wall_time_s
        return cls(c.reached, c.verdict, c.chosen and c.chosen.step, c.chosen and c.chosen.auc, c.tolerance,
                   c.start and c.start.retain_probability, c.chosen and c.chosen.retain_probability,
                   total_s, import_s, wall - checks_s, checks_s, total_s - import_s - wall)

    def lines(self) -> list[str]:
        kept = self.retain_kept
        retain = (f"retain probability: {self.retain_probability:.3f} against the model's "
                  f"{self.retain_probability_start:.3f} ({kept:.2f}×)" if kept is not None
                  else "retain probability: not measured (no retain set)")
        return [f"verdict: {self.verdict}", retain,
                f"time: {self.total_s:.0f}s in all: training {self.train_s:.0f}s, checks {self.checks_s:.0f}s, "
                f"loading and writing {self.other_s:.0f}s" + (f", GGUF import {self.import_s:.0f}s"
                                                              if self.import_s else "")]


def forget(model: str, records: str, retain: str | None, out: str, method: str | None = None,
           recipe: str | None = None, overrides: list[str] = (), adapter: str | None = None,
           calibration: str | None = None, ledger: str | None = None, device: str = "auto",
           quiet: bool = False) -> tuple[UnlearnResult, DeletionVerdict]:
    """Delete ``records`` from ``model`` (keeping ``retain``) into ``out``; with ``calibration`` (a file of
    never-trained examples) the stop is judged against it instead of the twins (``auto``: the twins, the
    default)."""
    from forgetkit.checks import input_file

    start = time.perf_counter()
    calibration = None if calibration == AUTO_CALIBRATION else calibration
    for path, flag in ((records, "--records"), (retain, "--retain")):
        if path is not None:
            input_file(path, flag)  # named by this command's flags, before any import or load
    directory, import_s = model_directory(model, quiet)
    values = {"until": "indistinguishable"} | ({} if calibration else {"criterion.reference": "twins"})
    config = recipe_config(method, recipe or (None if method else DEFAULT_RECIPE), list(overrides), values=values)
    request = UnlearnRequest(out=out, config=config, model=str(directory), adapter=adapter, forget=records,
                             retain=retain, calibration=calibration, ledger=ledger, device=device)
    result = run_unlearn(request, quiet=quiet)
    return result, DeletionVerdict.of(result, time.perf_counter() - start, import_s)
