"""Influence engine: loss gradients, Hessian and Gauss–Newton vector products over chosen parameters,
inverse-HVP solvers (exact, conjugate gradient, LiSSA, DataInf), and influence scores of a forget
set on parameters and modules with top-k selection. The closed-form editors (``forgetkit.editors``)
and influence-guided unlearning build on these."""

from forgetkit.influence.curvature import (
    Curvature,
    InfluenceError,
    example_losses,
    flatten,
    lm_loss,
    loss_gradient,
    module_of,
    summed_example_gradient,
    unflatten,
)
from forgetkit.influence.scores import InfluenceScores, influence_scores, select_parameters
from forgetkit.influence.solvers import SOLVERS, SolveResult, inverse_hvp, largest_eigenvalue, mean_eigenvalue

__all__ = ["SOLVERS", "Curvature", "InfluenceError", "InfluenceScores", "SolveResult", "example_losses", "flatten",
           "influence_scores", "inverse_hvp", "largest_eigenvalue", "lm_loss", "loss_gradient", "mean_eigenvalue",
           "module_of", "select_parameters", "summed_example_gradient", "unflatten"]
