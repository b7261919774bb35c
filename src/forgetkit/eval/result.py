"""The evaluation's headline numbers, typed: what unlearn summaries, the bench's leaderboard and the ledger
read from an evaluation ``summary.json`` (``forgetkit eval`` writes the full summary; this is its head)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class EvalHeadline:
    """An unlearning request's evaluation as its ``summary.json`` (``eval``) and audit record keep it; an edit
    request adds its success rate on the edited examples (``success``)."""

    forget_quality: float | None = None
    model_utility: float | None = None
    mia_auc: dict | None = None  # forget vs holdout AUC, per attack
    forget: dict | None = None  # the forget set's aggregates
    empirical_epsilon: dict | None = None
    success: dict | None = None  # an editor's request: {request, success, count, ...}

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["success"] is None:
            del data["success"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EvalHeadline:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class EvalResult:
    forget_quality: float | None = None
    model_utility: float | None = None
    forget: dict = field(default_factory=dict)  # the forget set's aggregates (probability, rougeL_recall, …)
    retain_probability: float | None = None
    mia_aucs: dict = field(default_factory=dict)  # forget vs holdout, per attack
    mia_attack: str | None = None  # the attack with the AUC furthest from 0.5
    privleak: float | None = None
    empirical_epsilon: dict | None = None  # the best attack's (ε lower bound, …)
    calibration_auc: float | None = None  # forget vs never-trained calibration examples (oracle-free; 0.5 ideal)
    weat: dict = field(default_factory=dict)  # WEAT test name -> effect size (when the evaluation ran it)
    toxic_rate: float | None = None  # share of toxic continuations of the toxicity prompts (when it ran)
    # randomized smoothing (when it ran): the bound on emitting a random forget question's answer under the noise
    smoothed_emission_bound: float | None = None

    @classmethod
    def from_summary(cls, summary: dict) -> EvalResult:
        sets = summary.get("sets", {})
        mia = summary.get("mia", {})
        return cls(forget_quality=summary.get("forget_quality"), model_utility=summary.get("model_utility"),
                   forget=sets.get("forget") or {}, retain_probability=sets.get("retain", {}).get("probability"),
                   mia_aucs=mia.get("auc") or {}, mia_attack=mia.get("best_attack"), privleak=mia.get("privleak"),
                   empirical_epsilon=mia.get("empirical_epsilon"),
                   calibration_auc=(summary.get("calibration") or {}).get("auc"),
                   weat={name: s["effect_size"] for name, s in summary.get("bias", {}).get("weat", {}).items()},
                   toxic_rate=(summary.get("toxicity") or {}).get("toxic_rate"),
                   smoothed_emission_bound=(summary.get("smoothing") or {}).get("set_upper_bound"))

    @property
    def mia_auc(self) -> float | None:
        """The best attack's AUC."""
        return self.mia_aucs.get(self.mia_attack) if self.mia_aucs else None

    def headline(self) -> EvalHeadline:
        """What an unlearning summary (``summary.json``'s ``eval``) and its audit record keep."""
        return EvalHeadline(forget_quality=self.forget_quality, model_utility=self.model_utility,
                            mia_auc=self.mia_aucs or None, forget=self.forget or None,
                            empirical_epsilon=self.empirical_epsilon)

    def leaderboard(self) -> dict:
        """The numbers of a bench cell's row (``result.json``'s ``metrics``)."""
        paraphrased = self.forget.get("paraphrased_question", {})
        return {"forget_quality": self.forget_quality, "model_utility": self.model_utility,
                "forget_probability": self.forget.get("probability"),
                "forget_rouge_l": self.forget.get("rougeL_recall"),
                "forget_truth_ratio": self.forget.get("truth_ratio"), "retain_probability": self.retain_probability,
                "mia_auc": self.mia_auc, "mia_attack": self.mia_attack, "privleak": self.privleak,
                "extraction_strength": self.forget.get("extraction_strength"),
                "paraphrase_probability": paraphrased.get("probability"),
                "paraphrase_rouge_l": paraphrased.get("rougeL_recall"), "calibration_auc": self.calibration_auc,
                **({"weat": dict(self.weat)} if self.weat else {}),
                **({"toxic_rate": self.toxic_rate} if self.toxic_rate is not None else {}),
                **({"smoothed_emission_bound": self.smoothed_emission_bound}
                   if self.smoothed_emission_bound is not None else {})}
