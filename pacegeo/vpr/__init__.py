"""Visual place recognition: global descriptors from the backbone's patch encoder (with early
token pruning), a retrieval index, and recall evaluation.

    from pacegeo.vpr import load_vpr, DescriptorIndex
    extractor = load_vpr("pacegeo-tiny-vpr")            # head + scorer on the bundled backbone
    db = DescriptorIndex(extractor.head.out_dim)
    db.add(extractor.describe(map_images, keep=0.5), names, poses, intrinsics)
    scores, ids = db.search(extractor.describe(query_images, keep=0.5), k=5)

    ternary = load_ternary_vpr("pacegeo-tiny-vpr-ternary")  # ternary weights, self-contained
    ternary.keep_activations = 0.6                          # activation sparsity, no retraining
    student = load_student("pacegeo-tiny-vpr-student")  # a distilled extractor with ~1/6 of the weights
    prompted = load_prompt("pacegeo-tiny-vpr-prompt")   # prompt-tuned frozen encoder, 256-d descriptors
"""

from pacegeo.vpr.extract import (
    DescriptorExtractor,
    EncodedTokens,
    build_head,
    distillation_loss,
    distillation_target,
    load_vpr,
    save_vpr,
)
from pacegeo.vpr.head import GeMConfig, GeMHead, VLADConfig, VLADHead, WeightedOTConfig, WeightedOTHead, log_sinkhorn
from pacegeo.vpr.recall import (
    load_gt_file,
    positives_by_index,
    positives_for_folders,
    positives_from_poses,
    positives_from_utm,
    recall_at_n,
)
from pacegeo.vpr.prompt import EnhancementHead, PromptConfig, PromptExtractor, PromptPool, load_prompt, save_prompt
from pacegeo.vpr.ternary import TernaryExtractor, TernaryLinear, load_ternary_vpr, save_ternary_vpr
from pacegeo.vpr.relations import confusion_weights, multi_similarity_loss, relation_loss, teacher_hard_pairs
from pacegeo.vpr.student import FeatureAlignment, StudentConfig, StudentExtractor, load_student, save_student

__all__ = [
    "DescriptorExtractor",
    "DescriptorIndex",
    "EncodedTokens",
    "EnhancementHead",
    "PromptConfig",
    "PromptExtractor",
    "PromptPool",
    "FeatureAlignment",
    "StudentConfig",
    "StudentExtractor",
    "GeMConfig",
    "TernaryExtractor",
    "TernaryLinear",
    "GeMHead",
    "VLADConfig",
    "VLADHead",
    "WeightedOTConfig",
    "WeightedOTHead",
    "build_head",
    "confusion_weights",
    "distillation_loss",
    "distillation_target",
    "load_gt_file",
    "load_prompt",
    "load_ternary_vpr",
    "load_student",
    "load_vpr",
    "log_sinkhorn",
    "multi_similarity_loss",
    "positives_by_index",
    "positives_for_folders",
    "positives_from_poses",
    "positives_from_utm",
    "recall_at_n",
    "save_prompt",
    "save_ternary_vpr",
    "relation_loss",
    "save_student",
    "save_vpr",
    "teacher_hard_pairs",
]


def __getattr__(name: str):
    # The index needs faiss (the "vpr" extra); descriptors do not, so it is imported on first use.
    if name == "DescriptorIndex":
        from pacegeo.vpr.index import DescriptorIndex

        return DescriptorIndex
    raise AttributeError(f"module 'pacegeo.vpr' has no attribute {name!r}")
