"""Two-phase fine-tuning of a keras.applications backbone (train.finetune.*; fastai's fine_tune, Keras' transfer
learning guide): what trains in each phase, and each phase's optimiser.

    phase 1 (head)       epochs 1 .. head_epochs: the backbone frozen, the head at head_lr / head_schedule
    phase 2 (fine-tune)  then until train.epochs: the backbone unfrozen (`unfreeze`: all, its top N layers with
                         weights, or the layers from the first one whose name starts with the given text) at
                         backbone_lr_multiplier x train.lr, the head at train.lr, on train.schedule over phase 2

Batch norm stays in inference mode in both phases: every BatchNormalization layer of the backbone stays frozen
(Keras 3 runs a non-trainable batch norm on its moving statistics even in training), so a few thousand images
never overwrite ImageNet's statistics. The best epoch is chosen over both phases; early stopping in phase 1 ends
phase 1 (phase 2 starts, with its own patience), in phase 2 it ends the run. Phase 2 starts from the last phase-1
weights. The phase is in the checkpoint's state (src/checkpoint.py): a run killed in either phase, or between
them, resumes exactly, and the phase of every epoch is in its log line, history.json and MLflow (metric `phase`).
"""
from __future__ import annotations

from omegaconf import DictConfig

from .errors import UserError

NAMES = {1: "phase 1: head", 2: "phase 2: fine-tune"}


def enabled(cfg: DictConfig) -> bool:
    return int(cfg.train.finetune.head_epochs) > 0


def _frozen_bn(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def weighted_layers(backbone) -> list:
    """The backbone's layers that phase 2 may unfreeze: those with weights, batch norms excepted, in order."""
    return [layer for layer in backbone.layers if layer.weights and not _frozen_bn(layer)]


def to_unfreeze(backbone, spec) -> list:
    """The layers phase 2 trains, from train.finetune.unfreeze; a spec that fits no layer is one line."""
    weighted = weighted_layers(backbone)
    if spec == "all":
        return weighted
    if isinstance(spec, int):
        if spec > len(weighted):
            raise UserError(f"train.finetune.unfreeze={spec}: {backbone.name} has {len(weighted)} layers with weights "
                            f"(batch norms not counted); give at most {len(weighted)}, or all")
        return weighted[-spec:]
    names = [layer.name for layer in backbone.layers]
    first = next((i for i, n in enumerate(names) if n.startswith(str(spec))), None)
    if first is None:
        tops = sorted({n.split("_")[0] for n in names})
        raise UserError(f"train.finetune.unfreeze={spec}: no layer of {backbone.name} has a name starting so; "
                        f"its layer names start with {', '.join(tops[:40])}{' ...' if len(tops) > 40 else ''}")
    later = {id(layer) for layer in backbone.layers[first:]}
    return [layer for layer in weighted if id(layer) in later]


def start(model, cfg: DictConfig, state, steps_per_epoch: int):
    """A new fine-tuning run: phase 1's model (backbone frozen) and optimiser. Checks `unfreeze` first, so a bad
    value is caught before phase 1 trains."""
    from .models.backbones import backbone_of
    from .optimizer import learning_rate, make_optimizer

    ft = cfg.train.finetune
    backbone = backbone_of(model)
    to_unfreeze(backbone, ft.unfreeze)
    backbone.trainable = False
    state.phase = 1
    lr = learning_rate(cfg, steps_per_epoch, lr=float(ft.head_lr), schedule=str(ft.head_schedule),
                       epochs=int(ft.head_epochs), warmup_epochs=0.0)
    return make_optimizer(cfg, steps_per_epoch, lr=lr)


def phase_over(cfg: DictConfig, state) -> bool:
    """Phase 1 has run its epochs, or its patience is spent: phase 2 is next."""
    patience = int(cfg.train.early_stopping_patience)
    return state.phase == 1 and (state.epoch >= int(cfg.train.finetune.head_epochs)
                                 or (patience > 0 and state.wait >= patience))


def phase_end(cfg: DictConfig, state) -> int:
    """The epoch the current phase runs until (fit's `epochs`)."""
    return int(cfg.train.finetune.head_epochs) if state.phase == 1 else int(cfg.train.epochs)


def begin_phase_2(model, cfg: DictConfig, state, steps_per_epoch: int):
    """Unfreeze the backbone (batch norms stay frozen), start phase 2's patience; its optimiser, with the
    backbone's learning-rate multiplier, for the model to be compiled with."""
    from .models.backbones import backbone_of
    from .optimizer import learning_rate, make_optimizer

    ft = cfg.train.finetune
    backbone = backbone_of(model)
    chosen = {id(layer) for layer in to_unfreeze(backbone, ft.unfreeze)}
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = id(layer) in chosen
    backbone_vars = {id(v) for v in backbone.weights}
    full_rate = [v.path for v in model.trainable_variables if id(v) not in backbone_vars]
    state.phase, state.phase_start, state.wait = 2, state.epoch, 0
    m = float(ft.backbone_lr_multiplier)
    print(f"train: phase 2 (fine-tune) from epoch {state.epoch + 1}: {len(chosen)} of "
          f"{len(weighted_layers(backbone))} backbone layers with weights unfrozen (batch norm stays in inference "
          f"mode), backbone learning rate {m:g} x {float(cfg.train.lr):g}")
    lr = learning_rate(cfg, steps_per_epoch, epochs=int(cfg.train.epochs) - state.epoch)
    return make_optimizer(cfg, steps_per_epoch, lr=lr, layerwise={"backbone_multiplier": m, "full_rate": full_rate})
