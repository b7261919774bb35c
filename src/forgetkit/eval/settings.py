"""How one evaluation runs (:class:`EvalSettings`): the one set of settings behind ``forgetkit eval``'s flags,
``unlearn --eval``'s and a bench config's ``eval:`` section. Free of torch, so that the command line can build its
flags from it without loading a model library."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.config import flag_setting
from forgetkit.errors import SettingError, require, require_positive

MIN_K = 0.4  # Min-K% Prob's share of lowest-probability tokens (Shi et al., 2024)
NOISE_KINDS = ("embed", "tokens")  # randomized smoothing's noise (eval.smoothing)


@dataclass
class EvalSettings:
    """How one evaluation runs: ``forgetkit eval``'s flags, ``unlearn --eval``'s (``--eval-…``) and a bench
    config's ``eval:`` section (:class:`forgetkit.bench.config.BenchEvalSettings`, lighter defaults) are these
    fields. Those marked ``added`` came to the bench after its cells were first cached: they leave a cell's key
    while they hold their defaults."""

    batch_size: int = flag_setting(32, "examples per scoring batch", added=True)
    generation_batch_size: int = flag_setting(64, "questions per greedy-generation batch", added=True)
    max_new_tokens: int = flag_setting(200, "greedy answer length in tokens (TOFU's 200; clipped to the context)")
    verbatim_new_tokens: int = flag_setting(128, "verbatim continuation length in tokens (MUSE's 128)")
    retain_limit: int = flag_setting(400, "evaluate the first N retain examples (TOFU's 400)")
    min_k: float = flag_setting(MIN_K, "Min-K%% MIA: the share of lowest-probability tokens scored", added=True)
    canary_candidates: int = flag_setting(200, "sampled secrets each canary is ranked against (exposure is "
                                               "extrapolated from them)")
    gradnorm: bool = flag_setting(True, "the GradNorm attack (one backward per example)")
    include_text: bool = flag_setting(False, "put questions, answers and generations in the log (off: examples by "
                                             "id and hash only)", added=True)
    seed: int = flag_setting(0, "the seed of sampled canary candidates and smoothing noise", added=True)
    weat: str | None = flag_setting(None, "WEAT bias effect sizes on the model's representations: the shipped WEAT "
                                          "6-8 (Caliskan et al. 2017), or FILE of the same layout", added=True,
                                    const="shipped", metavar="FILE")
    smoothing: str | None = flag_setting(None, "certified bound on emitting the forget answers under random prompt "
                                               "noise: embed:SIGMA (Gaussian noise on the prompt embeddings, in units "
                                               "of their RMS) or tokens:RHO (random token substitutions)",
                                         added=True, metavar="KIND:SCALE")
    smoothing_samples: int = flag_setting(100, "noise draws per forget question", added=True)
    toxicity: str | None = flag_setting(None, "toxic generation rate on the shipped provocative prompts, scored by a "
                                              "local Hugging Face sequence classifier (CLASSIFIER_DIR), or without "
                                              "one by the built-in lexicon fallback", added=True, const="lexicon",
                                        metavar="CLASSIFIER_DIR")

    def __post_init__(self) -> None:
        require_positive(self, "batch_size", "generation_batch_size", "max_new_tokens", "canary_candidates",
                         "smoothing_samples")
        if self.smoothing is not None:
            parse_noise(self.smoothing)
        require_positive(self, "verbatim_new_tokens", "retain_limit", allow_zero=True)
        require(0 < self.min_k <= 1, "min_k", f"must be in (0, 1], got {self.min_k}")


def parse_noise(spec: str) -> tuple[str, float]:
    """``"embed:0.1"`` → ``("embed", 0.1)``; a malformed spec is a SettingError naming ``smoothing``."""
    kind, _, scale = spec.partition(":")
    try:
        value = float(scale)
    except ValueError:
        value = float("nan")
    if kind not in NOISE_KINDS or not value > 0 or (kind == "tokens" and value > 1):
        raise SettingError("smoothing", f"expected embed:SIGMA (> 0) or tokens:RHO (in (0, 1]), got {spec!r}")
    return kind, value
