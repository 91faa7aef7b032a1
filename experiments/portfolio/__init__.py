"""End-to-end predictive portfolio allocation on the S&P 500 data shipped with skfolio: a
network reads recent returns and its weights are projected onto the mandate polytope.

Modules: :mod:`.data` (returns, features, chronological splits, no look-ahead),
:mod:`.mandates` (the four mandates as polyproj sets and as plain matrices),
:mod:`.layers` (polyproj and the peer layers), :mod:`.baselines` (skfolio), :mod:`.run`
(training, evaluation, report; ``python -m portfolio.run`` or ``polyproj portfolio``).
"""
