"""Pruner training: what the stages share (:mod:`.setup`), stage 1 attention distillation
(:mod:`.distill`), stage 2 camera/depth/point-map fine-tuning (:mod:`.finetune`) and both in one
run (:mod:`.pruner`). The scripts in ``train/`` are their command lines."""

from pacegeo.training.setup import (
    image_folder_batches,
    model_size,
    setup_training,
    synth_batches,
    training_batches,
    training_parser,
)

__all__ = ["image_folder_batches", "model_size", "setup_training", "synth_batches", "training_batches", "training_parser"]
