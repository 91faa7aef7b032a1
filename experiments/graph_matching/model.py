r"""PCA-GM (Wang, Yan & Yan, ICCV 2019) from pygmtools' PyTorch backend, with its *final*
Sinkhorn replaced by the layer under test.

The subclass changes one line of :class:`pygmtools.pytorch_backend.PCA_GM_Net`'s vanilla
forward: the cross-graph Sinkhorn inside the network (which only mixes embeddings) stays the
package's own, and the last ``Sinkhorn(s)`` becomes ``final(s)``.  Everything else — the
Siamese graph convolutions, the cross-graph layer, the weighted inner-product affinities, their
initialisation — is the package's code, built offline with ``pretrain=False`` semantics (random
initialisation, no download).
"""

from __future__ import annotations

import functools

import torch


def _pca_gm_base():
    import pygmtools
    from pygmtools.pytorch_backend import PCA_GM_Net, sinkhorn

    pygmtools.set_backend("pytorch")
    return PCA_GM_Net, sinkhorn


class PCAGMWithFinalLayer(torch.nn.Module):
    """``PCA_GM_Net(in_channel, hidden, out, num_layers)`` whose final Sinkhorn is ``final``.

    ``final(s, n1, n2)`` maps the (B, k, k) score matrix to the layer's soft matching."""

    def __init__(self, in_channel: int, hidden: int, final: torch.nn.Module, num_layers: int = 2,
                 cross_sk_iter: int = 20, cross_sk_tau: float = 0.05):
        super().__init__()
        PCA_GM_Net, sinkhorn = _pca_gm_base()
        self.net = PCA_GM_Net(in_channel, hidden, hidden, num_layers)
        self.final = final
        self._cross = functools.partial(sinkhorn, dummy_row=False, max_iter=cross_sk_iter, tau=cross_sk_tau,
                                        batched_operation=True)

    def scores(self, feat1, feat2, A1, A2):
        """The final affinity ``s`` (B, k, k): the vanilla PCA-GM forward up to its last Sinkhorn."""
        net = self.net
        n1 = torch.full((feat1.shape[0],), feat1.shape[1], dtype=torch.long)
        n2 = torch.full((feat2.shape[0],), feat2.shape[1], dtype=torch.long)
        emb1, emb2 = feat1, feat2
        for i in range(net.gnn_layer):
            emb1, emb2 = getattr(net, f"gnn_layer_{i}")([A1, emb1], [A2, emb2])
            if i == net.gnn_layer - 2:
                s = self._cross(getattr(net, f"affinity_{i}")(emb1, emb2), n1, n2)
                cross = getattr(net, f"cross_graph_{i}")
                emb1, emb2 = (cross(torch.cat((emb1, torch.bmm(s, emb2)), dim=-1)),
                              cross(torch.cat((emb2, torch.bmm(s.transpose(1, 2), emb1)), dim=-1)))
        return getattr(net, f"affinity_{net.gnn_layer - 1}")(emb1, emb2)

    def forward(self, feat1, feat2, A1, A2):
        return self.final(self.scores(feat1, feat2, A1, A2))
