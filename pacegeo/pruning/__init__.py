"""Token pruning before the AA stack: scoring, budgets, merging and restoration.

* :mod:`~pacegeo.pruning.scorer`: :class:`TokenScorer`, a learned importance logit per patch token;
* :mod:`~pacegeo.pruning.training_free`: importance without weights, and the random / grid baselines;
* :mod:`~pacegeo.pruning.budget`: per-frame keep counts and the importance-adaptive merge budget;
* :mod:`~pacegeo.pruning.merge`: keep / merge / drop, and the way back to the dense grid;
* :mod:`~pacegeo.pruning.restore`: :class:`FeatureGuidedRestoration` of the entries the heads read;
* :mod:`~pacegeo.pruning.flops`: analytic FLOP counts per stage.

:class:`pacegeo.pace.PaceVGGT` puts them together around a frozen backbone.
"""

from pacegeo.pruning.budget import (
    frame_keep_counts,
    importance_mass,
    keep_count,
    split_merge_budget,
    total_merge_budget,
    validate_keep,
    validate_merge_ratio,
    validate_ref_boost,
)
from pacegeo.pruning.flops import forward_flops, ideal_speedup
from pacegeo.pruning.merge import (
    TokenReduction,
    gather_tokens,
    kept_indices,
    reduce_tokens,
    scatter_to_grid,
    straight_through_mask,
    topk_mask,
    unmerge,
)
from pacegeo.pruning.restore import FeatureGuidedRestoration, RestorationConfig
from pacegeo.pruning.scorer import ScorerConfig, TokenScorer
from pacegeo.pruning.training_free import (
    coverage_prior,
    distinctiveness,
    distinctiveness_scores,
    dither_rank,
    grid_scores,
    random_scores,
)

__all__ = [
    "FeatureGuidedRestoration",
    "RestorationConfig",
    "ScorerConfig",
    "TokenReduction",
    "TokenScorer",
    "coverage_prior",
    "distinctiveness",
    "distinctiveness_scores",
    "dither_rank",
    "forward_flops",
    "frame_keep_counts",
    "gather_tokens",
    "grid_scores",
    "ideal_speedup",
    "importance_mass",
    "keep_count",
    "kept_indices",
    "random_scores",
    "reduce_tokens",
    "scatter_to_grid",
    "split_merge_budget",
    "straight_through_mask",
    "topk_mask",
    "total_merge_budget",
    "unmerge",
    "validate_keep",
    "validate_merge_ratio",
    "validate_ref_boost",
]
