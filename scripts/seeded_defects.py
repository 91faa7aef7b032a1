"""Seeded defects: does the test suite fail when the library is wrong?

Each defect is a small edit of the library's source (a flipped sign, a dropped row, an ignored
argument, a loosened certificate …).  For each one the script copies ``src/`` to a temporary
directory, applies the edit, runs the test suite against the copy (``PYTHONPATH`` first, so the
copy shadows the installed package) and records whether some test failed (the defect is
*caught*) or the whole suite passed (*missed*).  Run it before each release; every defect must
be caught.  Prints a table and writes ``scripts/results/seeded_defects.json``.

    python scripts/seeded_defects.py [--only NAME ...] [--timeout 900]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]

# (name, file under src/polyproj, text to replace, replacement); lists for several edits
DEFECTS = [
    ("interior-point finish disabled", "functional/polyhedron.py",
     "_rescale: bool = True, _interior: bool = True) -> SolveResult:",
     "_rescale: bool = True, _interior: bool = False) -> SolveResult:"),
    ("after the interior point, the rescue restarts from stale ALM points and nothing re-certifies",
     "functional/polyhedron.py",
     ["alm.y_best, alm.nu_best = y.clone(), nu.clone()", "kkt = torch.maximum(kkt, kkt_residual(data, x, y, nu, sx))"],
     ["pass", "kkt = kkt"]),
    ("bound gradients: lower bound gets the upper bound's sign", "sets.py",
     "out[:, D.var[rows]] = w[:, : D.nb][:, rows] * (1.0 if upper else -1.0)",
     "out[:, D.var[rows]] = w[:, : D.nb][:, rows]"),
    ("bounded masked product ignores the mask of its input", "functional/bounded.py",
     "return self.data.rows(self.data.combine(v * w)) * w", "return self.data.rows(self.data.combine(v)) * w"),
    ("DAQP bound multipliers keep DAQP's sign convention", "functional/active_set.py",
     "torch.where(data.sign > 0, lam, -lam).clamp_min(0)", "lam.clamp_min(0)"),
    ("sparse backward forgets the free-coordinate mask", "functional/sparse_dual.py",
     "out = G - Df * data.combine(Ma * v)", "out = G - data.combine(Ma * v)"),
    ("sparse certificate ignores the bounds", "functional/sparse_dual.py",
     "primal = torch.maximum(primal, (torch.maximum(Y - up, lo - Y).clamp_min(0) / bscale).amax(0))", "primal = primal"),
    ("cvxpy inequalities read with the wrong sign", "cvxpy_frontend.py",
     "kwargs.update(A=rows_of(ineq, -1.0),", "kwargs.update(A=rows_of(ineq, 1.0),"),
    ("cvxpy bounds: the loosest lower bound kept", "cvxpy_frontend.py",
     '(("lower", coef > 0, "amax", -float("inf"))', '(("lower", coef > 0, "amin", -float("inf"))'),
    ("DAQP answers accepted without the certificate", "functional/active_set.py",
     'kkt = torch.where(ok, kkt_residual(data, x, y, nu, sx, z), torch.full_like(sx, float("inf")))',
     'kkt = torch.where(ok, torch.zeros_like(sx), torch.full_like(sx, float("inf")))'),
    ("DAQP engine never falls back to the batched solver", "functional/active_set.py",
     "redo = (~(kkt <= tol)).nonzero().flatten()", "redo = torch.zeros(0, dtype=torch.long)"),
    ("layer ignores its engine", "nn.py",
     "return_info=True, engine=self.engine)", "return_info=True)"),
    ("layer never moves its set", "nn.py",
     "self.set = self.set.to(probe.device)", "self.set = self.set"),
    ("info.iterations reported as zeros", "project.py",
     "iterations=iters.reshape(batch),", "iterations=torch.zeros_like(iters).reshape(batch),"),
    ("info.kkt_residual reported as zeros", "project.py",
     "kkt_residual=kkt.reshape(batch),", "kkt_residual=torch.zeros_like(kkt).reshape(batch),"),
    ("violation() returns zeros", "sets.py",
     "out = bound._relative_violation(flat) if relative else bound._violation(flat)",
     "out = torch.zeros(flat.shape[0], dtype=flat.dtype)"),
    ("layer ignores its tol", "nn.py",
     "project(x, self.current_set(), tol=self.tol,", "project(x, self.current_set(), tol=None,"),
    ("layer ignores on_failure", "nn.py",
     "on_failure=self.on_failure, return_info=True, engine=self.engine)",
     "on_failure=\"raise\", return_info=True, engine=self.engine)"),
    ("hs_jacobian ignores tol, max_iter and on_failure", "project.py",
     "_run(x.detach(), P, tol, max_iter, on_failure)", "_run(x.detach(), P, None, 500, \"raise\")"),
    ("scipy.sparse input raises", "_validation.py",
     "value = value.toarray()  # scipy.sparse: the solvers work on dense data",
     "raise ValueError(f\"{name} must be dense\")"),
    ("project ignores tol", "project.py",
     "tol = check_tolerance(tol, x.dtype)", "tol = check_tolerance(None, x.dtype)"),
    ("wrong sign in the backward", "_jacobian.py",
     "return g - data.combine(nu), nu", "return g + data.combine(nu), nu"),
    ("flipped inequality (A y >= a)", "sets.py",
     "return PolyhedronData.from_rows(C * scale.unsqueeze(-1), c * scale, A.shape[-2]), scale",
     "return PolyhedronData.from_rows(-C * scale.unsqueeze(-1), -c * scale, A.shape[-2]), scale"),
    ("backward drops the active inequality rows", "functional/polyhedron.py",
     "return data.eq | (slack <= _ACTIVE_TAU * data.row_scales(y)) | (nu > 0)", "return data.eq.expand_as(slack)"),
    ("feasibility restoration disabled", "functional/polyhedron.py",
     "    if bad.numel():\n        di = data.take(bad)", "    if False:\n        di = data.take(bad)"),
    ("contains ignores tol", "sets.py",
     "return self.violation(y, relative=True) <= tol", "return self.violation(y, relative=True) <= 1.0"),
    ("simplex backward forgets the mean", "_jacobian.py",
     "return ff * (g - (ff * g).sum(-1, keepdim=True) / count.clamp_min(1))", "return ff * g"),
    ("transport backward forgets the column duals", "_jacobian.py",
     "return theta * (G - alpha[:, :, None] - beta[:, None, :]), alpha, beta",
     "return theta * (G - alpha[:, :, None]), alpha, beta"),
    ("transportation swaps its marginals", "structured.py",
     "return self._value(\"row_sums\", torch.float64), self._value(\"col_sums\", torch.float64)",
     "return self._value(\"col_sums\", torch.float64), self._value(\"row_sums\", torch.float64)"),
    ("box clips only from above", "functional/simple_sets.py",
     "y = torch.minimum(torch.maximum(x, lower), upper)", "y = torch.minimum(x, upper)"),
    ("primal feasibility judged at the input's scale", "functional/polyhedron.py",
     "pscale = torch.maximum(data.row_scales(y), torch.finfo(y.dtype).eps * sx[:, None])",
     "pscale = torch.maximum(data.row_scales(y), sx[:, None])"),
    ("certificate counts rows active within 1e-6 and ignores complementarity", "testing.py",
     ["for tol in (active_tol, 1e-3 * active_tol)", "\"kkt\": max(primal, stationarity, comp)"],
     ["for tol in (1e-6,)", "\"kkt\": max(primal, stationarity)"]),
    ("stale constraint data not detected", "sets.py",
     "            if tensor._version != version:", "            if False:"),
    ("half-space data gradient sign", "structured.py",
     "grads = {\"beta\": w, \"c\": -(nu[:, None] * jg + w[:, None] * y)}",
     "grads = {\"beta\": -w, \"c\": -(nu[:, None] * jg + w[:, None] * y)}"),
    ("partial-matching backward forgets the total's dual", "functional/partial_transport.py",
     "return theta * (G - w[:, :m, None] - w[:, None, m:-1] - w[:, -1:, None])",
     "return theta * (G - w[:, :m, None] - w[:, None, m:-1])"),
    ("partial-matching row capacities doubled", "structured.py",
     "return one(m), one(n), torch.tensor(self.k, dtype=torch.float64, device=x.device)",
     "return 2 * one(m), one(n), torch.tensor(self.k, dtype=torch.float64, device=x.device)"),
    ("partial-matching block-coordinate fallback disabled", "functional/partial_transport.py",
     "        if pend.numel():\n            v_new[pend] = _block_round(", "        if False:\n            v_new[pend] = _block_round("),
    ("transportation merge step disabled", "functional/transport.py",
     "_MERGE = True", "_MERGE = False"),
    ("transportation merge moves components the wrong way", "functional/transport.py",
     "0.0, -b / (size + (size == 0)))", "0.0, b / (size + (size == 0)))"),
]


def run_suite(src: Path, timeout: float) -> tuple[bool, str, float]:
    """Run the test suite against the library in ``src``; returns (failed, last line, seconds)."""
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return True, "timeout (counted as caught: the suite did not pass)", time.perf_counter() - t0
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    failed = [line.split(" - ")[0].removeprefix("FAILED ").removeprefix("ERROR ") for line in lines
              if line.startswith(("FAILED", "ERROR"))]
    summary = (lines[-1] if lines else proc.stderr[-200:])
    if failed:
        summary = f"{failed[0]} ({summary})"
    return proc.returncode != 0, summary, time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "results")
    args = parser.parse_args(argv)
    defects = [d for d in DEFECTS if not args.only or d[0] in args.only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # the pristine copy must pass, or a "caught" defect means nothing
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        # the CLI finds the experiments beside the package, as in the source checkout
        (Path(tmp) / "experiments").symlink_to(ROOT / "experiments")
        failed, last, seconds = run_suite(src, args.timeout)
        if failed:
            raise SystemExit(f"the unmodified library fails its suite: {last}")
        print(f"unmodified library: {last} ({seconds:.0f} s)")
        for name, rel, old, new in tqdm(defects, desc="seeded defects"):
            shutil.rmtree(src)
            shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
            path = src / "polyproj" / rel
            text = path.read_text()
            for o, n in zip(*((old, new) if isinstance(old, list) else ([old], [new]))):
                if text.count(o) != 1:
                    raise SystemExit(f"defect {name!r}: the text to replace occurs {text.count(o)} times in {rel}")
                text = text.replace(o, n)
            path.write_text(text)
            failed, last, seconds = run_suite(src, args.timeout)
            rows.append({"defect": name, "file": rel, "caught": failed, "suite": last, "seconds": seconds})
    print("| seeded defect | caught | first failing test (suite) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['defect']} | {'yes' if r['caught'] else '**MISSED**'} | {r['suite']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "seeded_defects.json"
    if args.only and previous.exists():  # a partial rerun updates its rows of the last full run
        ran = {r["defect"] for r in rows}
        kept = [r for r in json.loads(previous.read_text())["rows"] if r["defect"] not in ran and
                r["defect"] in {d[0] for d in DEFECTS}]
        rows = kept + rows
    caught = sum(r["caught"] for r in rows)
    print(f"{caught} of {len(rows)} seeded defects caught")
    (args.out / "seeded_defects.json").write_text(json.dumps({"caught": caught, "total": len(rows), "rows": rows}, indent=1))
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
