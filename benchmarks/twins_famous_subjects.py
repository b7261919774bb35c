"""Where the twins' assumption fails: famous subjects, on a model whose pretraining knows them.

The twins assume that a model which never saw a subject finds the true answer and a donor's answer equally
likely. A pretrained model did see famous subjects. This scores the criterion's check (forget vs twins, with
the control) on a model that was never fine-tuned on the records: half of a QA file is the "forget" set, the
other half the retain pool. An AUC far above 0.5 means the forget set would never look unseen, and
``--until indistinguishable`` would end "not indistinguishable" (exit 5) rather than stop.

    python benchmarks/twins_famous_subjects.py --model models/smollm2-135m-instruct \\
        --qa ../shared/fixtures/tofu/real_authors_perturbed.json
"""

from __future__ import annotations

import argparse

from forgetkit.data.readers import read_records
from forgetkit.data.twins import TwinSettings, counterfactual_twins
from forgetkit.eval.calibration import CriterionSets, CriterionSettings, compare
from forgetkit.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--qa", required=True, help="question-answer records about famous subjects")
    parser.add_argument("--min-similarity", type=float, nargs="+", default=[0.5, 0.2],
                        help="criterion.twins.min_similarity values to try")
    args = parser.parse_args()
    records = read_records(args.qa)
    forget, retain = records[::2], records[1::2]
    model, tokenizer = load_model(args.model)
    model.eval()
    for pool, similarity in [(p, s) for p in ("forget", "retain") for s in args.min_similarity]:
        settings = CriterionSettings(reference="twins", twins=TwinSettings(pool=pool, min_similarity=similarity))
        twins = counterfactual_twins(forget, retain, settings.twins)
        sets = CriterionSets(settings, tokenizer, forget, twins, None, 128)
        f, c, _ = sets._scores(model)
        print(f"{len(forget)} forget records, {len(twins)} twins (pool={pool}, min_similarity={similarity}): "
              f"AUC {compare(f, c)[0]:.3f}, tolerance ±{sets.criterion.tolerance:.3f}")


if __name__ == "__main__":
    main()
