"""Global-descriptor heads on patch tokens: a learned cluster-weighted optimal-transport head and
two training-free heads (GeM, VLAD).

All heads map patch tokens ``[B, N, C]`` (plus an optional class token ``[B, C]``) to an
L2-normalised descriptor ``[B, D]``. Because every head is a (weighted) sum or mean over tokens,
a token that is pruned before the head simply drops out of the aggregate; no head needs a fixed
``N``.

:class:`WeightedOTHead` (SALAD-style aggregation with per-cluster weights):

1. per token, a small MLP gives ``K`` cluster scores and another one reduced features ``f_i``
   (``cluster_dim`` wide);
2. a dustbin row holding one learned scalar is appended to the ``K x N`` score matrix, and the
   ``(K + 1) x N`` matrix is turned into a transport plan ``P`` by log-domain Sinkhorn: every token
   sends mass 1, every cluster receives ``c = min(1, N / (K + 1))`` and the dustbin the rest
   (``N - K c``), so tokens can be discarded into the dustbin;
3. cluster ``j`` aggregates ``V_j = sum_i P[j, i] f_i``, intra-normalised and multiplied by a
   learned weight ``w_j = softplus(.)`` (clusters that matter more count more);
4. a global scene token (projected class token, or projected GeM of the tokens) is L2-normalised
   and concatenated in front; an optional linear layer maps to ``out_dim``; final L2 norm.

The head also exposes its own per-token importance (:meth:`WeightedOTHead.token_importance`):
the mass a token sends to real clusters (not the dustbin), weighted by the cluster weights.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pacegeo.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "GeMConfig",
    "GeMHead",
    "VLADConfig",
    "VLADHead",
    "WeightedOTConfig",
    "WeightedOTHead",
    "gem",
    "log_sinkhorn",
    "ot_log_marginals",
]


# ---------------------------------------------------------------------------------------------
# Optimal transport


def ot_log_marginals(num_tokens: int, num_clusters: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log masses of the ``K`` clusters plus dustbin (``[K + 1]``) and of the ``N`` tokens (``[N]``).

    Every token sends mass 1; every cluster receives ``c = min(1, N / (K + 1))`` and the dustbin the
    remaining ``N - K c`` (at least ``N / (K + 1)``), so both sides sum to ``N`` for any ``N >= 1``.
    With ``N > K`` this is SALAD's choice (up to the common scale ``N + K``).
    """
    if num_tokens < 1:
        raise InputError(f"optimal-transport aggregation needs at least one token, got {num_tokens}")
    c = min(1.0, num_tokens / (num_clusters + 1))
    rows = torch.full((num_clusters + 1,), math.log(c), device=device)
    rows[-1] = math.log(num_tokens - num_clusters * c)
    cols = torch.zeros(num_tokens, device=device)
    return rows, cols


def log_sinkhorn(scores: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, iters: int) -> torch.Tensor:
    """Entropic optimal transport (regularisation 1) in the log domain.

    Args:
        scores: ``[B, M, N]`` log-potentials (higher = more likely to be matched).
        log_a: ``[M]`` or ``[B, M]`` log row masses.
        log_b: ``[N]`` or ``[B, N]`` log column masses (same total as the rows).
        iters: Sinkhorn iterations (each updates rows, then columns).
    Returns:
        ``[B, M, N]`` log transport plan; after the final column update every column sums exactly to
        its mass, rows converge to theirs as ``iters`` grows.
    """
    u = torch.zeros_like(scores[:, :, 0])
    v = torch.zeros_like(scores[:, 0, :])
    for _ in range(iters):
        u = log_a - torch.logsumexp(scores + v[:, None, :], dim=2)
        v = log_b - torch.logsumexp(scores + u[:, :, None], dim=1)
    return scores + u[:, :, None] + v[:, None, :]


def gem(tokens: torch.Tensor, p: float | torch.Tensor = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean over tokens: ``[B, N, C] -> [B, C]``, ``(mean_i max(x_i, eps)^p)^(1/p)``."""
    return tokens.clamp(min=eps).pow(p).mean(dim=1).pow(1.0 / p)


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


# ---------------------------------------------------------------------------------------------
# Learned head


@dataclass(frozen=True)
class WeightedOTConfig:
    """Architecture of :class:`WeightedOTHead`.

    Descriptor size: ``num_clusters * cluster_dim + global_dim`` (1280 by default), or ``out_dim``
    when it is positive (a final linear layer).
    """

    in_dim: int  # width C of the patch tokens
    num_clusters: int = 16
    cluster_dim: int = 64
    global_dim: int = 256
    hidden_dim: int = 256
    out_dim: int = 0  # > 0: final linear projection to this size
    sinkhorn_iters: int = 3
    dustbin_init: float = 1.0
    global_source: str = "cls"  # "cls" (class token) or "gem" (GeM of the patch tokens)
    gem_p: float = 3.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.global_source not in ("cls", "gem"):
            raise InputError(f"global_source must be 'cls' or 'gem', got {self.global_source!r}")
        for name in ("in_dim", "num_clusters", "cluster_dim", "global_dim", "hidden_dim", "sinkhorn_iters"):
            if getattr(self, name) < 1:
                raise InputError(f"WeightedOTConfig.{name} must be positive, got {getattr(self, name)}")

    @property
    def descriptor_dim(self) -> int:
        return self.out_dim if self.out_dim > 0 else self.num_clusters * self.cluster_dim + self.global_dim


@dataclass(frozen=True)
class AggregationOutput:
    """Intermediate results of :meth:`WeightedOTHead.aggregate`.

    Attributes:
        descriptor: ``[B, D]`` L2-normalised.
        plan: ``[B, K + 1, N]`` transport plan (last row: dustbin); every column sums to 1.
        cluster_weights: ``[K]`` positive cluster weights.
    """

    descriptor: torch.Tensor
    plan: torch.Tensor
    cluster_weights: torch.Tensor


class WeightedOTHead(nn.Module):
    """Cluster-weighted optimal-transport aggregation: ``[B, N, C]`` (+ cls ``[B, C]``) -> ``[B, D]``."""

    needs_fit = False

    def __init__(self, config: WeightedOTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.score = _mlp(c.in_dim, c.hidden_dim, c.num_clusters, c.dropout)
        self.feature = _mlp(c.in_dim, c.hidden_dim, c.cluster_dim, c.dropout)
        self.scene = _mlp(c.in_dim, c.hidden_dim, c.global_dim, 0.0)
        self.dustbin = nn.Parameter(torch.tensor(float(c.dustbin_init)))
        # softplus(log(e - 1)) = 1: all clusters start with weight 1.
        self.cluster_logits = nn.Parameter(torch.full((c.num_clusters,), math.log(math.e - 1.0)))
        self.proj = nn.Linear(c.num_clusters * c.cluster_dim + c.global_dim, c.out_dim) if c.out_dim > 0 else None

    @property
    def out_dim(self) -> int:
        return self.config.descriptor_dim

    def cluster_weights(self) -> torch.Tensor:
        """``[K]`` positive per-cluster weights."""
        return F.softplus(self.cluster_logits)

    def transport_plan(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, C] -> [B, K + 1, N]`` soft assignment of tokens to clusters (last row: dustbin)."""
        b, n, _ = tokens.shape
        scores = rearrange(self.score(tokens), "b n k -> b k n")
        dust = self.dustbin.to(scores.dtype).expand(b, 1, n)
        log_a, log_b = ot_log_marginals(n, self.config.num_clusters, device=tokens.device)
        log_plan = log_sinkhorn(torch.cat((scores, dust), dim=1), log_a.to(scores.dtype), log_b.to(scores.dtype),
                                self.config.sinkhorn_iters)
        return log_plan.exp()

    def _scene_token(self, tokens: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        if self.config.global_source == "cls":
            if cls is None:
                raise InputError("this head uses the class token, but the encoder has none (use global_source='gem')")
            return self.scene(cls)
        return self.scene(gem(tokens, self.config.gem_p))

    def aggregate(self, tokens: torch.Tensor, cls: torch.Tensor | None = None) -> AggregationOutput:
        """Descriptor plus the transport plan it came from (see :class:`AggregationOutput`)."""
        plan = self.transport_plan(tokens)
        weights = self.cluster_weights()
        feats = self.feature(tokens)  # [B, N, l]
        clusters = torch.einsum("bkn,bnl->bkl", plan[:, :-1], feats)
        clusters = F.normalize(clusters, dim=-1) * weights[None, :, None]
        scene = F.normalize(self._scene_token(tokens, cls), dim=-1)
        desc = torch.cat((scene, rearrange(clusters, "b k l -> b (k l)")), dim=-1)
        if self.proj is not None:
            desc = self.proj(desc)
        return AggregationOutput(F.normalize(desc, dim=-1), plan, weights)

    def forward(self, tokens: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens [B, N, C]``, ``cls [B, C]`` or None -> L2-normalised ``[B, D]``."""
        return self.aggregate(tokens, cls).descriptor

    def token_importance(self, tokens: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, N]`` non-negative: each token's mass on real clusters times their weights,
        ``sum_j P[j, i] w_j`` (a token sent wholly to the dustbin scores 0)."""
        plan = self.transport_plan(tokens)
        return torch.einsum("bkn,k->bn", plan[:, :-1], self.cluster_weights())


# ---------------------------------------------------------------------------------------------
# Training-free heads


@dataclass(frozen=True)
class GeMConfig:
    """Generalised-mean pooling of patch tokens."""

    in_dim: int
    p: float = 3.0
    eps: float = 1e-6

    @property
    def descriptor_dim(self) -> int:
        return self.in_dim


class GeMHead(nn.Module):
    """``[B, N, C] -> [B, C]``: GeM over tokens, L2-normalised. No parameters, no fitting."""

    needs_fit = False

    def __init__(self, config: GeMConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def out_dim(self) -> int:
        return self.config.descriptor_dim

    def forward(self, tokens: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(gem(tokens.float(), self.config.p, self.config.eps), dim=-1)


@dataclass(frozen=True)
class VLADConfig:
    """NetVLAD-style aggregation with a k-means vocabulary fitted on the user's own map images.

    Descriptor size ``num_clusters * in_dim``. Tokens are L2-normalised before clustering and
    assignment when ``normalize_tokens`` (cosine k-means, as AnyLoc does).
    """

    in_dim: int
    num_clusters: int = 16
    power: float = 0.5  # signed power normalisation exponent (1 disables)
    normalize_tokens: bool = True
    kmeans_iters: int = 30
    max_fit_tokens: int = 100_000  # k-means runs on at most this many tokens (random subset)
    seed: int = 0

    @property
    def descriptor_dim(self) -> int:
        return self.num_clusters * self.in_dim


class VLADHead(nn.Module):
    """Hard-assignment VLAD: ``[B, N, C] -> [B, K * C]``.

    Per cluster, the residuals of the tokens assigned to it are summed, signed-power-normalised,
    intra-normalised (L2 per cluster); the concatenation is L2-normalised. No PCA. Call
    :meth:`fit` once on map features before encoding.
    """

    needs_fit = True

    def __init__(self, config: VLADConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("centroids", torch.zeros(config.num_clusters, config.in_dim))
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def out_dim(self) -> int:
        return self.config.descriptor_dim

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def _prepare(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.float()
        return F.normalize(tokens, dim=-1) if self.config.normalize_tokens else tokens

    @torch.no_grad()
    def fit(self, features: torch.Tensor | np.ndarray) -> "VLADHead":
        """Fit the vocabulary with k-means (``scipy.cluster.vq.kmeans2``, k-means++ init, seeded).

        Args:
            features: ``[M, C]`` or ``[B, N, C]`` token features of map images.
        Returns:
            self.
        """
        from scipy.cluster.vq import kmeans2

        c = self.config
        feats = torch.as_tensor(features).reshape(-1, c.in_dim)
        if feats.shape[0] < c.num_clusters:
            raise InputError(f"VLAD needs at least {c.num_clusters} tokens to fit, got {feats.shape[0]}")
        feats = self._prepare(feats).cpu().double().numpy()
        rng = np.random.default_rng(c.seed)
        if feats.shape[0] > c.max_fit_tokens:
            feats = feats[np.sort(rng.choice(feats.shape[0], c.max_fit_tokens, replace=False))]
        centroids, _ = kmeans2(feats, c.num_clusters, iter=c.kmeans_iters, minit="++", seed=rng)
        self.centroids.copy_(torch.from_numpy(centroids).float())
        self.fitted.fill_(True)
        logger.info("fitted a %d-word VLAD vocabulary on %d tokens", c.num_clusters, feats.shape[0])
        return self

    def assign(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, C] -> [B, N]`` int64 nearest centroid of every token."""
        x = self._prepare(tokens)
        centroids = self.centroids.to(x.device)
        dist = (x * x).sum(-1, keepdim=True) - 2 * x @ centroids.T + (centroids * centroids).sum(-1)
        return dist.argmin(dim=-1)

    def forward(self, tokens: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        if not self.is_fitted:
            raise InputError("the VLAD vocabulary is not fitted: call VLADHead.fit(map_features) first")
        x = self._prepare(tokens)
        centroids = self.centroids.to(x.device)
        onehot = F.one_hot(self.assign(tokens), self.config.num_clusters).to(x.dtype)  # [B, N, K]
        # sum_i a_ik (x_i - c_k) = sum_i a_ik x_i - (sum_i a_ik) c_k
        vlad = torch.einsum("bnk,bnc->bkc", onehot, x) - onehot.sum(dim=1)[..., None] * centroids
        if self.config.power != 1.0:
            vlad = vlad.sign() * vlad.abs().pow(self.config.power)
        vlad = F.normalize(vlad, dim=-1)
        return F.normalize(rearrange(vlad, "b k c -> b (k c)"), dim=-1)
