"""Influence engine: loss gradients, Hessian and Gauss–Newton vector products over chosen parameters,
and inverse-HVP solvers (exact, conjugate gradient, LiSSA, DataInf). Influence scores and the
closed-form editors build on these (issue 6, in progress)."""

from forgetkit.influence.curvature import Curvature, InfluenceError, flatten, lm_loss, loss_gradient, unflatten
from forgetkit.influence.solvers import SOLVERS, SolveResult, inverse_hvp, largest_eigenvalue

__all__ = ["SOLVERS", "Curvature", "InfluenceError", "SolveResult", "flatten", "inverse_hvp", "largest_eigenvalue",
           "lm_loss", "loss_gradient", "unflatten"]
