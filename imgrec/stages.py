"""Two-stage transfer: which freeze depth is in force when, and the final stage's
trainable set for building and saving the optimizer. Keras is imported lazily
(through ``imgrec.models``), so the loop and its hooks can share this module."""

from __future__ import annotations

from imgrec import models
from imgrec.config import TrainConfig


def stage_freeze_depth(cfg: TrainConfig, epoch: int) -> int | str:
    """The whole backbone frozen for the first head epochs, then ``freeze_depth``."""
    return "all" if epoch < cfg.head_epoch_count() else cfg.model.freeze_depth


def apply_freeze_depth(model, cfg: TrainConfig, depth: int | str) -> int:
    """``set_freeze_depth`` with what the config knows: pretrained weights keep the
    backbone's BatchNorm frozen; ``all-K`` counts the model's own blocks."""
    return models.set_freeze_depth(model, depth, pretrained=models.is_pretrained(cfg.model.weights),
                                   model_name=cfg.model.name)


class final_stage_trainable:
    """The final stage's trainable flags for the duration of a block. Loading a
    ``model.keras`` builds the optimizer on the trainable variables, so its state
    (built for every stage) must be built and saved with the last stage's set."""

    def __init__(self, model, cfg: TrainConfig, stage):
        self.model, self.cfg, self.stage = model, cfg, stage
        self.switch = cfg.head_epoch_count() > 0 and stage != cfg.model.freeze_depth

    def __enter__(self):
        if self.switch:
            apply_freeze_depth(self.model, self.cfg, self.cfg.model.freeze_depth)
        return self.model

    def __exit__(self, *exc):
        if self.switch:
            apply_freeze_depth(self.model, self.cfg, self.stage)
        return False
