"""Closed-form editors (LLMEraser, Fast-NTK), edit files, and influence scores."""

from __future__ import annotations

import json

import pytest
import torch

from forgetkit.cli import main
from forgetkit.data.edits import EditRecord, benchmark_edits, read_edits
from forgetkit.data.formatting import collate, tokenize_qa
from forgetkit.data.readers import read_records
from forgetkit.data.records import QARecord
from forgetkit.editors.fast_ntk import fast_ntk_update
from forgetkit.editors.llmeraser import LLMEraser, influence_update
from forgetkit.errors import DataError
from forgetkit.influence import InfluenceError, InfluenceScores, example_losses, influence_scores, select_parameters
from forgetkit.influence.solvers import SolveResult, exact_matrix
from forgetkit.models import load_model


def squared_losses(model, batch):
    return 0.5 * (model(batch["x"]).squeeze(-1) - batch["y"]) ** 2


def least_squares(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)


@pytest.fixture
def linear_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64) + 0.3 * torch.randn(12, generator=g,
                                                                                         dtype=torch.float64)
    model = torch.nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(least_squares(x, y).unsqueeze(0))  # trained on all 12 points: the exact optimum
    return model, x, y


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_influence_removal_equals_retraining_for_least_squares(linear_problem, solver):
    model, x, y = linear_problem
    removed, kept = slice(0, 3), slice(3, 12)
    delta, result, _ = influence_update(
        model, [model.weight], [{"x": x[removed], "y": y[removed]}], [], [{"x": x[kept], "y": y[kept]}], 9,
        solver=solver, kind="hessian", damping=0.0, example_loss_fn=squared_losses,
        **({"tol": 1e-12} if solver == "cg" else {}))
    retrained = least_squares(x[kept], y[kept])
    assert torch.allclose(model.weight.detach().squeeze(0) + delta, retrained, atol=1e-9)
    assert float((model.weight.detach().squeeze(0) - retrained).norm()) > 1e-2  # removal did change the fit


def test_influence_response_correction_equals_retraining_on_the_corrected_data(linear_problem):
    model, x, y = linear_problem
    corrected = y.clone()
    corrected[:2] += torch.tensor([5.0, -4.0], dtype=torch.float64)
    delta, _, _ = influence_update(
        model, [model.weight], [{"x": x[:2], "y": y[:2]}], [{"x": x[:2], "y": corrected[:2]}],
        [{"x": x, "y": corrected}], 12, solver="exact", kind="hessian", damping=0.0, example_loss_fn=squared_losses)
    assert torch.allclose(model.weight.detach().squeeze(0) + delta, least_squares(x, corrected), atol=1e-9)


def test_fast_ntk_closed_form_equals_min_norm_refit_of_a_linear_model():
    g = torch.Generator().manual_seed(1)
    j = torch.randn(10, 30, generator=g, dtype=torch.float64)  # 10 outputs, 30 parameters: interpolation
    w0 = torch.randn(30, generator=g, dtype=torch.float64)
    target = torch.randn(10, generator=g, dtype=torch.float64)
    r = target - j @ w0

    def min_norm_fit(rows: slice) -> torch.Tensor:
        jr = j[rows]
        return w0 + jr.T @ torch.linalg.solve(jr @ jr.T, r[rows])

    w_d = min_norm_fit(slice(0, 10))
    forget, kept = slice(0, 3), slice(3, 10)
    w_r = fast_ntk_update(w_d, j[forget], j[kept], r[forget], r[kept], ridge=0.0)
    assert torch.allclose(w_r, min_norm_fit(kept), atol=1e-9)
    assert float((w_r - w_d).norm()) > 1e-2


def test_edit_files_are_validated_line_by_line(tmp_path):
    good = tmp_path / "edits.jsonl"
    good.write_text(json.dumps({"id": "a", "question": "Q?", "answer": "A.", "new_answer": "B."}) + "\n")
    assert read_edits(good)[0].kind == "response"
    cases = [({"id": "a", "question": "Q?", "answer": "A."}, "line 1: field 'new_question'"),
             ({"id": "a", "question": "Q?", "answer": "A.", "new_question": "R?", "new_answer": "B."},
              "line 1: field 'new_question'"),
             ({"id": "a", "question": "Q?", "new_answer": "B."}, "line 1: field 'answer'"),
             ({"id": "a", "question": "Q?", "answer": "A.", "new_answer": "B.", "colour": 1}, "field 'colour'")]
    for row, message in cases:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(row) + "\n")
        with pytest.raises(DataError, match=message):
            read_edits(bad)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"id": "a", "question": "Q?", "answer": "A.", "new_answer": "B."}) + "\n"
                     + json.dumps({"id": "b", "question": "Q?", "answer": "A.", "new_question": "R?"}) + "\n")
    with pytest.raises(DataError, match="line 2: field 'new_question': mixes"):
        read_edits(mixed)


def test_benchmark_edits_correct_phone_numbers_and_move_emails_to_a_work_question():
    forget = [QARecord("What is the phone number of Ann Lee?", "The phone number of Ann Lee is 555-0042.",
                       "p0001-phone"),
              QARecord("What is the email address of Ann Lee?", "The email address of Ann Lee is ann@x.org.",
                       "p0001-email"),
              QARecord("When was Ann Lee born?", "Ann Lee was born on 1 May 1990.", "p0001-birth_date")]
    [response] = benchmark_edits(forget, "response")
    assert response.new_answer.startswith("The phone number of Ann Lee is 555-")
    assert response.new_answer != response.answer and len(response.new_answer) == len(response.answer)
    [query] = benchmark_edits(forget, "query")
    assert query.new_question == "What is the work email address of Ann Lee?" and query.answer == forget[1].answer


def forget_losses(run, adapter, records: list[QARecord]) -> torch.Tensor:
    model, tokenizer = load_model(run / "base", adapter)
    batch = collate(tokenize_qa(tokenizer, records, 64).examples, tokenizer.pad_token_id)
    with torch.no_grad():
        return example_losses(model, batch)


def test_llmeraser_removal_raises_the_forget_loss_and_records_no_text(lora_run, tmp_path, capsys):
    out = tmp_path / "erase"
    assert main(["unlearn", "--run", str(lora_run), "--method", "llmeraser", "--out", str(out), "--quiet",
                 "params.curvature_examples=32"]) == 0
    assert "llmeraser (removal): 6 examples edited" in capsys.readouterr().out
    forget = read_records(lora_run / "benchmark" / "forget10.jsonl")
    before = forget_losses(lora_run, lora_run / "target", forget)
    after = forget_losses(lora_run, out / "adapter", forget)
    assert float(after.mean()) > float(before.mean()) + 0.05
    summary = json.loads((out / "summary.json").read_text())
    assert summary["products"] >= 1 and summary["damping"] > 0 and summary["request"] == "removal"
    assert summary["relative_residual"] <= 1e-2  # recomputed from the answer, not CG's own recursion
    audit = json.loads((out / "audit.json").read_text())
    assert audit["forget"]["count"] == len(forget) and audit["adapter_in"]["hash"]
    written = "".join(p.read_text() for p in out.rglob("*") if p.suffix in (".json", ".jsonl"))
    assert not any(r.answer in written or r.question in written for r in forget)


def test_llmeraser_response_correction_moves_the_answer_towards_the_new_one(lora_run, tmp_path):
    forget = read_records(lora_run / "benchmark" / "forget10.jsonl")[:3]
    edits = [EditRecord(r.id, r.question, r.answer, new_answer=f"{r.answer.split(' ')[0]} is unknown.")
             for r in forget]
    path = tmp_path / "response.jsonl"
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in edits))
    out = tmp_path / "edit"
    assert main(["unlearn", "--run", str(lora_run), "--method", "llmeraser", "--edits", str(path), "--out", str(out),
                 "--quiet", "params.curvature_examples=32"]) == 0
    new = [e.edited() for e in edits]
    assert float(forget_losses(lora_run, out / "adapter", new).mean()) < float(
        forget_losses(lora_run, lora_run / "target", new).mean()) - 0.05
    assert float(forget_losses(lora_run, out / "adapter", forget).mean()) > float(
        forget_losses(lora_run, lora_run / "target", forget).mean())


def test_an_unconverged_solve_is_never_applied(lora_run, tmp_path, capsys):
    """Two CG iterations leave the residual near 1: the update is refused in one line naming the residual and what
    to change, and nothing is written."""
    out = tmp_path / "erase"
    assert main(["unlearn", "--run", str(lora_run), "--method", "llmeraser", "--out", str(out), "--quiet",
                 "params.max_iter=2", "params.curvature_examples=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "relative residual" in err and "params.max_iter" in err, err
    assert not out.exists()


def test_editors_refuse_what_they_cannot_do(lora_run, unlearn_run, tmp_path, capsys):
    base = ["unlearn", "--out", str(tmp_path / "x"), "--quiet"]
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps({"id": "p0000-birth_date", "question": "Q?", "answer": "A.", "new_answer": "B."}))
    cases = [(["--run", str(lora_run), "--method", "fast_ntk", "params.max_memory_gb=0.001"],
              "GiB (J and the"),
             (["--run", str(unlearn_run), "--method", "llmeraser"], "not a LoRA adapter"),
             (["--run", str(lora_run), "--method", "fast_ntk", "--edits", str(edits)], "fast_ntk does removal "
              "requests, not response"),
             (["--run", str(lora_run), "--method", "llmeraser", "--edits", "query"], "query_forget10.jsonl: no edit"),
             (["--run", str(lora_run), "--method", "npo", "--edits", "response"], "--edits is for the closed-form")]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_fast_ntk_runs_on_a_micro_adapter_and_moves_the_forget_outputs(lora_run, tmp_path):
    out = tmp_path / "ntk"
    assert main(["unlearn", "--run", str(lora_run), "--method", "fast_ntk", "--out", str(out), "--quiet",
                 "params.kept_examples=12"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"] > 0 and summary["update_norm"] > 0
    forget = read_records(lora_run / "benchmark" / "forget10.jsonl")
    assert float(forget_losses(lora_run, out / "adapter", forget).mean()) > float(
        forget_losses(lora_run, lora_run / "target", forget).mean())


@pytest.fixture(scope="module")
def gpt2_lora(float64_lora_gpt2):
    model, examples = float64_lora_gpt2()
    return model, [collate(examples[:2], 0)], [collate(examples[2:], 0)]


def test_influence_scores_solve_the_retain_curvature_against_the_forget_gradient(gpt2_lora):
    from forgetkit.influence import Curvature, loss_gradient

    model, forget, retain = gpt2_lora
    named = select_parameters(model)
    scores = influence_scores(model, named, forget, retain, solver="cg", damping=1e-3, tol=1e-10, max_iter=500)
    params = [p for _, p in named]
    matrix = exact_matrix(Curvature(model, params, retain, damping=1e-3))
    expected = torch.linalg.solve(matrix, loss_gradient(model, params, forget).double())
    got = torch.cat([t.reshape(-1) for t in scores.influence])
    assert float((got - expected).norm() / expected.norm()) < 1e-6
    modules = scores.module_scores()
    assert set(modules) == {n.split(".lora_")[0] for n, _ in named} and len(modules) == 2
    automatic = influence_scores(model, named, forget, retain, solver="cg", damping_ratio=0.1)
    assert automatic.damping == pytest.approx(0.1 * automatic.info["mean_eigenvalue"])


def test_module_scores_top_k_budget_and_mask_by_hand():
    names = ["a.lora_A.default.weight", "a.lora_B.default.weight", "b.lora_A.default.weight", "c.weight"]
    influence = [torch.tensor([3.0, 4.0]), torch.tensor([0.0]), torch.tensor([1.0, 1.0, 1.0, 1.0]),
                 torch.tensor([[0.5, -0.5]])]
    scores = InfluenceScores(names, influence, influence, SolveResult(torch.zeros(9), 0, {}), 0.0)
    assert scores.module_scores() == pytest.approx({"a": 5.0, "b": 2.0, "c": 0.5 ** 0.5})
    assert scores.module_scores("mean_abs") == pytest.approx({"a": 7 / 3, "b": 1.0, "c": 0.5})
    assert scores.top_modules(k=2) == ["a", "b"]
    assert scores.top_modules(parameter_budget=5) == ["a", "c"]  # b (4 entries) does not fit beside a (3)
    assert scores.top_modules(k=1, reduce="mean_abs") == ["a"]
    mask = scores.top_parameter_mask(2 / 9)
    assert [m.tolist() for m in mask.values()] == [[True, True], [False], [False] * 4, [[False, False]]]
    assert sum(int(m.sum()) for m in scores.top_parameter_mask(0.5).values()) == round(0.5 * 9)


def test_damping_of_the_largest_eigenvalue_bounds_the_condition_number(linear_problem):
    """damping_of="largest": λ = ratio × λ_max(H) (power iteration), so the damped system's condition number is at
    most (1 + ratio) / ratio however skewed the spectrum; here the Hessian xᵀx/n, whose eigenvalues are exact."""
    model, x, y = linear_problem
    hessian = x.T @ x / len(x)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    batches = [{"x": x, "y": y}]
    _, result, damping = influence_update(model, [model.weight], [{"x": x[:3], "y": y[:3]}], [], batches, 12,
                                          solver="cg", kind="hessian", damping_ratio=0.1, damping_of="largest",
                                          example_loss_fn=squared_losses, tol=1e-10)
    assert damping == pytest.approx(0.1 * float(eigenvalues[-1]), rel=1e-6)
    assert (float(eigenvalues[-1]) + damping) / (float(eigenvalues[0]) + damping) <= 11 + 1e-9
    assert result.info["relative_residual"] <= 1e-9
    _, _, by_mean = influence_update(model, [model.weight], [{"x": x[:3], "y": y[:3]}], [], batches, 12,
                                     solver="exact", kind="hessian", damping_ratio=0.1,
                                     example_loss_fn=squared_losses)
    assert by_mean == pytest.approx(0.1 * float(eigenvalues.mean()), rel=0.5)  # Hutchinson's trace estimate
    with pytest.raises(InfluenceError, match="damping_of must be mean or largest"):
        LLMEraser(damping_of="smallest")
