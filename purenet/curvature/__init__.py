"""Curvature: Hessian- and Gauss-Newton-vector products, and the Krylov methods built on them.

One concern per module, each citing its papers; imports run one way, from
``base`` outward, so no module imports one that imports it:

    base.py      the names the parts share: Params, METHODS, NonFiniteCurvatureError,
                 flatten_params, the input checks, tree arithmetic
    products.py  hvp, batched_hvp, ggn_vp, hessian (Pearlmutter 1994; Schraudolph 2002)
    operator.py  CurvatureOperator and its builders: hessian_, ggn_ and model_operator
    eigen.py     lanczos, Eigenpairs (Golub and Van Loan, section 10.1); named eigen, not
                 lanczos, so that the submodule and the function purenet.curvature.lanczos
                 do not shadow each other
    density.py   spectral_density, SpectralDensity: stochastic Lanczos quadrature
                 (Golub and Meurant 1994; Ghorbani, Krishnan and Xiao 2019)
    plotting.py  plot_spectral_density (matplotlib, imported when called)
    trace.py     hutchinson_trace, hutchpp_trace (Hutchinson 1989; Meyer et al. 2021)
    solve.py     cg_solve (Hestenes and Stiefel 1952)
    hessian_free.py  make_hessian_free_step (Martens 2010), its damping kept in DAMPING_RANGE

Every Krylov method is a device-resident loop over flattened parameter
vectors (``flatten_params``), with pytrees in and out.
"""

from purenet.curvature.base import METHODS, NonFiniteCurvatureError, flatten_params
from purenet.curvature.density import SpectralDensity, spectral_density
from purenet.curvature.eigen import Eigenpairs, lanczos
from purenet.curvature.hessian_free import HessianFreeInfo, HessianFreeState, make_hessian_free_step
from purenet.curvature.operator import CurvatureOperator, ggn_operator, hessian_operator, model_operator
from purenet.curvature.plotting import plot_spectral_density
from purenet.curvature.products import batched_hvp, ggn_vp, hessian, hvp
from purenet.curvature.solve import CGResult, cg_solve
from purenet.curvature.trace import TraceEstimate, hutchinson_trace, hutchpp_trace

__all__ = [
    "METHODS",
    "CGResult",
    "CurvatureOperator",
    "Eigenpairs",
    "HessianFreeInfo",
    "HessianFreeState",
    "NonFiniteCurvatureError",
    "SpectralDensity",
    "TraceEstimate",
    "batched_hvp",
    "cg_solve",
    "flatten_params",
    "ggn_operator",
    "ggn_vp",
    "hessian",
    "hessian_operator",
    "hutchinson_trace",
    "hutchpp_trace",
    "hvp",
    "lanczos",
    "make_hessian_free_step",
    "model_operator",
    "plot_spectral_density",
    "spectral_density",
]
