"""GPU readiness: what the first machine with a CUDA device checks at once (``make gpu-check``). Skipped, with the
reason, where there is none (this project's CI and its 2-core development machine have never had one).

- requests and evaluations placed on the device (peak memory read from CUDA, not the process's RSS);
- bf16 and fp16 mixed-precision training following float32's loss trajectory, and evaluation in bf16/fp16
  following float32's per-set probabilities, within the bounds below;
- ``accelerate launch`` with one process on one device giving the same run as a plain process.

The bounds are stated, not yet measured on a GPU: the first run of ``make gpu-check`` measures them
(docs/results.md). ``FORGETKIT_TEST_DEVICE=cpu`` runs the device-independent parts on CPU (bf16 only: CPU
autocast has no fp16), which is how these tests were checked where no GPU was lent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forgetkit.cli import main

DEVICE = os.environ.get("FORGETKIT_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                                  reason="no CUDA device: make gpu-check runs these where one is")]
# the largest relative difference of a training loss, and the largest absolute difference of an evaluation's
# mean probability, against float32 on the micro run's model (one epoch)
LOSS_BOUNDS = {"bf16": 0.05, "fp16": 0.01}
PROBABILITY_BOUNDS = {"bfloat16": 0.02, "float16": 0.005}
PRECISIONS = [p for p in ("bf16", "fp16") if DEVICE == "cuda" or p == "bf16"]
DTYPES = [d for d in ("bfloat16", "float16") if DEVICE == "cuda" or d == "bfloat16"]


def _unlearn(run: Path, out: Path, *extra: str) -> list[dict]:
    assert main(["unlearn", "train.epochs=1", "train.batch_size=2", *extra, "--run", str(run), "--split", "forget10",
                 "--method", "graddiff", "--quiet", "--device", DEVICE, "--out", str(out)]) == 0
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def float32_log(unlearn_run, tmp_path_factory) -> list[dict]:
    return _unlearn(unlearn_run, tmp_path_factory.mktemp("gpu") / "fp32")


def test_a_request_runs_on_the_device(unlearn_run, float32_log, tmp_path):
    out = tmp_path / "fp32"
    _unlearn(unlearn_run, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["memory_kind"] == ("cuda_max_allocated" if DEVICE == "cuda" else "cpu_rss")
    assert summary["peak_memory_mb"] > 0 and (out / "adapter" / "adapter_model.safetensors").is_file()
    repeat = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in repeat] == pytest.approx([r["loss"] for r in float32_log], rel=1e-4)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_mixed_precision_training_follows_float32(unlearn_run, float32_log, tmp_path, precision):
    log = _unlearn(unlearn_run, tmp_path / precision, f"train.mixed_precision={precision}")
    assert len(log) == len(float32_log)
    for ours, reference in zip(log, float32_log, strict=True):
        assert ours["loss"] == pytest.approx(reference["loss"], rel=LOSS_BOUNDS[precision]), ours["step"]


def _evaluate(run: Path, out: Path, dtype: str) -> dict:
    assert main(["eval", "--model", str(run / "target"), "--data", str(run / "benchmark"), "--out", str(out),
                 "--device", DEVICE, "--dtype", dtype, "--max-new-tokens", "4", "--quiet"]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("dtype", DTYPES)
def test_evaluation_in_half_precision_follows_float32(unlearn_run, tmp_path, dtype):
    reference = _evaluate(unlearn_run, tmp_path / "float32", "float32")
    ours = _evaluate(unlearn_run, tmp_path / dtype, dtype)
    for role in ("forget", "retain", "holdout"):
        assert ours["sets"][role]["probability"] == pytest.approx(reference["sets"][role]["probability"],
                                                          abs=PROBABILITY_BOUNDS[dtype]), role


def test_accelerate_on_one_device_is_the_plain_run(unlearn_run, float32_log, tmp_path):
    out = tmp_path / "launched"
    command = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--num_processes", "1",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               *(["--cpu"] if DEVICE == "cpu" else []), "-m", "forgetkit.cli", "unlearn", "--run", str(unlearn_run),
               "--split", "forget10", "--method", "graddiff", "--quiet", "train.epochs=1", "train.batch_size=2",
               "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in float32_log], rel=1e-4)
