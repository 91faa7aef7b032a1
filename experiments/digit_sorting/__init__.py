"""Permutation learning: sorting sequences of handwritten 3-digit numbers (``load_digits``)
with a shared CNN that scores each number and a permutation layer (NeuralSort, Sinkhorn,
Gumbel-Sinkhorn, LinSATNet, polyproj's Birkhoff projection).  ``polyproj sorting``."""
