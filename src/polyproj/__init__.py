"""polyproj — exact Euclidean projection layers onto polyhedra, differentiated with the
Han–Sun (HS) Jacobian.

>>> import torch, polyproj as pp
>>> P = pp.Polyhedron(A=torch.eye(2), a=torch.ones(2), B=torch.ones(1, 2), b=torch.ones(1))
>>> y = pp.project(torch.tensor([3.0, 0.0], dtype=torch.float64), P)
"""

from . import optim
from ._errors import ConvergenceError, ConvergenceWarning, InfeasibleError
from .cvxpy_frontend import CvxpyProjection, from_cvxpy
from .nn import Projection
from .project import ProjectionInfo, hs_jacobian, project
from .sets import ConvexSet, Polyhedron
from .sparse import SparsePolyhedron
from .structured import Birkhoff, Box, CappedSimplex, HalfSpace, PartialMatching, Simplex, Transportation

__version__ = "0.1.0"

__all__ = [
    "Birkhoff",
    "Box",
    "CappedSimplex",
    "ConvergenceError",
    "ConvergenceWarning",
    "ConvexSet",
    "CvxpyProjection",
    "HalfSpace",
    "InfeasibleError",
    "PartialMatching",
    "Polyhedron",
    "Projection",
    "ProjectionInfo",
    "Simplex",
    "SparsePolyhedron",
    "Transportation",
    "from_cvxpy",
    "hs_jacobian",
    "optim",
    "project",
]
