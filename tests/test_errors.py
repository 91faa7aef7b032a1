"""Bad inputs and the errors they raise: (call, exception type, message pattern)."""

import warnings

import numpy as np
import pytest
import torch

import polyproj as pp

F64 = torch.float64
I2 = np.eye(2)
P_OK = pp.Polyhedron(A=I2, a=np.ones(2))
X_OK = torch.zeros(3, 2, dtype=F64)

CASES = [
    # constructor
    (lambda: pp.Polyhedron(A=I2), ValueError, r"A and a must be given together"),
    (lambda: pp.Polyhedron(B=I2), ValueError, r"B and b must be given together"),
    (lambda: pp.Polyhedron(), ValueError, r"at least one of"),
    (lambda: pp.Polyhedron(A=np.ones(2), a=np.ones(2)), ValueError, r"A must have at least 2 dimension"),
    (lambda: pp.Polyhedron(A=I2, a=np.ones(3)), ValueError, r"a must have shape \(\.\.\., m\) with m = 2 rows of A"),
    (lambda: pp.Polyhedron(A=I2, a=np.ones((2, 1))), ValueError, r"a must have shape \(\.\.\., m\) with m = 2"),
    (lambda: pp.Polyhedron(A=np.ones((3, 2, 2)), a=np.ones((4, 2))), ValueError, r"batch dimensions of the constraint data do not broadcast"),
    (lambda: pp.project(torch.zeros(5, 2, dtype=F64), pp.Polyhedron(A=I2, a=np.ones((3, 2)))), ValueError,
     r"x has batch shape \(5,\), which does not broadcast against the constraint set's batch shape \(3,\)"),
    (lambda: pp.Polyhedron(A=I2, a=np.ones(2), B=np.ones((1, 3)), b=[0.0]), ValueError, r"same number of columns"),
    (lambda: pp.Polyhedron(A=I2, a=[1.0, np.nan]), ValueError, r"a must be finite"),
    (lambda: pp.Polyhedron(A=[[1.0, np.inf], [0, 1]], a=[1.0, 1.0]), ValueError, r"A must be finite"),
    (lambda: pp.Polyhedron(B=I2, b=[np.inf, 0.0]), ValueError, r"b must be finite"),
    (lambda: pp.Polyhedron(A=I2, a=["x", "y"]), ValueError, r"a must be a real numeric array"),
    (lambda: pp.Polyhedron(A=torch.eye(2, dtype=torch.complex64), a=[1.0, 1.0]), ValueError, r"A must be a real tensor"),
    (lambda: pp.Polyhedron(A=np.zeros((1, 0)), a=[1.0]), ValueError, r"at least one column"),
    # empty polyhedra
    (lambda: pp.Polyhedron(A=[[1.0], [-1.0]], a=[0.0, -1.0]), pp.InfeasibleError, r"empty.*A\[0\].*A\[1\]"),
    (lambda: pp.Polyhedron(B=[[1.0, 1.0], [1.0, 1.0]], b=[0.0, 1.0]), pp.InfeasibleError, r"empty.*B\[0\].*B\[1\]"),
    (lambda: pp.Polyhedron(A=[[1.0, 0.0]], a=[-1.0], B=[[1.0, 0.0]], b=[0.0]), pp.InfeasibleError, r"A\[0\].*B\[0\]"),
    # project
    (lambda: pp.project(np.zeros(2), P_OK), ValueError, r"x must be a torch.Tensor"),
    (lambda: pp.project(torch.zeros(2, dtype=torch.int64), P_OK), ValueError, r"x must have a floating dtype \(float16, bfloat16, float32 or float64\), got torch.int64"),
    (lambda: pp.project(torch.zeros(3, 3, dtype=F64), P_OK), ValueError, r"x must have shape \(\.\.\., 2\), got \(3, 3\)"),
    (lambda: pp.project(torch.zeros((), dtype=F64), P_OK), ValueError, r"x must have shape"),
    (lambda: pp.project(torch.tensor([0.0, np.nan], dtype=F64), P_OK), ValueError, r"x must be finite"),
    (lambda: pp.project(torch.tensor([0.0, np.inf], dtype=F64), P_OK), ValueError, r"x must be finite"),
    (lambda: pp.project(X_OK, I2), ValueError, r"P must be a polyproj constraint set"),
    (lambda: pp.project(X_OK, P_OK, tol=0.0), ValueError, r"tol must be a real number in \(0, 1\)"),
    (lambda: pp.project(X_OK, P_OK, tol=float("nan")), ValueError, r"tol must be"),
    (lambda: pp.project(X_OK, P_OK, max_iter=0), ValueError, r"max_iter must be a positive integer"),
    (lambda: pp.project(X_OK, P_OK, max_iter=2.5), ValueError, r"max_iter must be a positive integer"),
    (lambda: pp.project(X_OK, P_OK, on_failure="ignore"), ValueError, r"on_failure must be one of"),
    (lambda: pp.hs_jacobian(torch.zeros(3, dtype=F64), P_OK), ValueError, r"x must have shape"),
    (lambda: pp.Projection(I2), ValueError, r"P must be a polyproj constraint set"),
    (lambda: pp.Projection(P_OK, max_iter=-1), ValueError, r"max_iter must be a positive integer"),
    (lambda: P_OK.contains(torch.zeros(3, dtype=F64)), ValueError, r"y must have shape"),
    # structured sets
    (lambda: pp.Box([0.0, 0.0], [1.0]), ValueError, r"lower and upper must have the same length n"),
    (lambda: pp.Box([0.0, 2.0], [1.0, 1.0]), pp.InfeasibleError, r"box is empty: lower\[1\] = 2.0 > upper\[1\] = 1.0"),
    (lambda: pp.Box([0.0, np.nan], [1.0, 1.0]), ValueError, r"lower must not contain NaN"),
    (lambda: pp.Box([np.inf], [np.inf]), ValueError, r"lower may not contain \+inf"),
    (lambda: pp.Box(np.zeros((2, 0)), np.ones(2)), ValueError, r"lower must be a scalar or an array of shape \(\.\.\., n\) with n >= 1"),
    (lambda: pp.Box(np.zeros((3, 2)), np.ones((4, 2))), ValueError, r"batch dimensions of lower and upper do not broadcast"),
    (lambda: pp.CappedSimplex(np.zeros((2, 3)), np.ones(3), torch.tensor([1.0, 4.0])), pp.InfeasibleError,
     r"capped simplex is empty at batch indices \(1,\)"),
    (lambda: pp.HalfSpace([0.0, 0.0], 1.0), ValueError, r"c must be nonzero"),
    (lambda: pp.HalfSpace([1.0, np.nan], 1.0), ValueError, r"c must be finite"),
    (lambda: pp.HalfSpace([1.0, 1.0], np.inf), ValueError, r"beta must be finite"),
    (lambda: pp.HalfSpace([1.0, 1.0], "a"), ValueError, r"beta must be a real scalar"),
    (lambda: pp.Simplex(total=-1.0), pp.InfeasibleError, r"the simplex is empty: total = -1.0 < 0"),
    (lambda: pp.Simplex(total=float("nan")), ValueError, r"total must be finite"),
    (lambda: pp.CappedSimplex([0.0, 0.0], [0.4, 0.4], 1.0), pp.InfeasibleError, r"outside \[sum\(lower\), sum\(upper\)\]"),
    (lambda: pp.CappedSimplex([0.0, -np.inf], [1.0, 1.0], 1.0), ValueError, r"lower must be finite"),
    (lambda: pp.project(torch.zeros(3, dtype=F64), pp.Box([0.0, 0.0], [1.0, 1.0])), ValueError, r"x must have shape \(\.\.\., 2\)"),
    (lambda: pp.project(torch.zeros(3, 0, dtype=F64), pp.Simplex()), ValueError, r"x must have shape \(\.\.\., n\)"),
]


@pytest.mark.parametrize("call, exc, pattern", CASES)
def test_bad_input_raises(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_infeasible_error_is_value_error_with_certificate():
    with pytest.raises(ValueError) as err:
        pp.Polyhedron(A=[[1.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 1.0]], a=[-1.0, 0.0, 0.0, 5.0])
    assert isinstance(err.value, pp.InfeasibleError)
    cert = err.value.certificate
    u = cert["inequality_weights"]
    A = np.array([[1.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    a = np.array([-1.0, 0.0, 0.0, 5.0])
    assert (u >= 0).all() and np.abs(A.T @ u).max() < 1e-9 and a @ u < 0
    assert set(cert["rows"]) == {"A[0]", "A[1]", "A[2]"}


def _hard_instance():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 20))
    a = rng.uniform(0.1, 1.0, 40)
    return pp.Polyhedron(A=A, a=a), torch.tensor(5 * rng.standard_normal((4, 20)))


def test_convergence_failure_raises():
    P, x = _hard_instance()
    with pytest.raises(pp.ConvergenceError, match=r"did not reach tol") as err:
        pp.project(x, P, max_iter=1)
    assert not bool(err.value.info.converged.all())


def test_convergence_failure_can_warn():
    P, x = _hard_instance()
    with pytest.warns(pp.ConvergenceWarning, match=r"did not reach tol"):
        y, info = pp.project(x, P, max_iter=1, on_failure="warn", return_info=True)
    assert not bool(info.converged.all())
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y2, info2 = pp.project(x, P, return_info=True)
    assert bool(info2.converged.all())


def test_input_is_not_modified():
    P, x = _hard_instance()
    x0 = x.clone()
    pp.project(x, P)
    assert torch.equal(x, x0)
    A0 = P.A.clone()
    pp.project(x, P)
    assert torch.equal(P.A, A0)
