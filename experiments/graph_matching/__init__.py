"""Deep graph matching on Willow-ObjectClass with exact assignment layers: PCA-GM (pygmtools)
whose final Sinkhorn is replaced by the layer under test.

Modules: :mod:`.data` (SIFT node features, Delaunay graphs, the field's split, pairs and
outliers), :mod:`.model` (the PCA-GM subclass), :mod:`.layers` (Sinkhorn, LinSATNet, polyproj),
:mod:`.run` (tuning, training, evaluation, report; ``polyproj graph-matching``).
"""
