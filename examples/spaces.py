"""Search spaces of your own, for `tinymnist search --space examples/spaces.py:NAME`.

A space is a function of an Optuna trial returning (model, recipe settings): the model an nn.Module mapping
(N, 1, 28, 28) images to 10 logits or log-probabilities, the settings any fields of tinymnist's Recipe (epochs,
batch_size, lr, cycle_epochs, rotate, shift, scale, ...; the rest keep the search's one-cycle defaults). A
searched model is rebuilt from the file and the trial's parameters, so keep the file self-contained.
"""

from __future__ import annotations

from torch import nn


def block(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, bias=False), nn.BatchNorm2d(cout, momentum=0.01), nn.ReLU())


def space(trial) -> tuple[nn.Module, dict]:  # an optuna Trial
    """Plain Conv-BN-ReLU stacks: two layers, a max-pool, two to four more; widths and the recipe searched."""
    width = trial.suggest_categorical("width", [8, 12, 16])
    after = trial.suggest_int("after_pool", 2, 4)
    layers = [block(1, 8), block(8, width), nn.MaxPool2d(2)]
    layers += [block(width, width) for _ in range(after)]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, 10, 1), nn.Flatten())
    epochs = trial.suggest_int("epochs", 8, 15)
    return model, {"epochs": epochs, "lr": trial.suggest_float("lr", 0.05, 0.4, log=True),
                   "batch_size": trial.suggest_categorical("batch_size", [64, 128]),
                   "rotate": trial.suggest_float("rotate", 0.0, 10.0), "cycle_epochs": epochs - 3}


def compact_step4(trial) -> tuple[nn.Module, dict]:  # a space of one point
    """The compact journey's final step (compact_7k4, 7,432 parameters, and its recipe) as a one-point space:
    its score on the validation split is the bar the speed study's choice must reach."""
    model = nn.Sequential(block(1, 8), block(8, 16), nn.MaxPool2d(2), block(16, 8, 1), block(8, 16), block(16, 16),
                          block(16, 16), nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 10, 1, bias=False), nn.Flatten())
    return model, {"epochs": 15, "batch_size": 64, "lr": 0.2, "cycle_epochs": 11, "rotate": 7.0, "shift": 0.05,
                   "scale": 0.05}


# --- one-point spaces of recipes whose fresh-seed test outcome is committed: the search's calibration ----------
# tinymnist search --study calibrate-frontier-sep-3k8 --space examples/spaces.py:frontier_sep_3k8 \
#     --max-params 4000 --trials 1 --design 0 --workers 1
# tinymnist search-rescore --study calibrate-frontier-sep-3k8 --top 1 --seeds 2,3,4 --workers 2 \
#     --space examples/spaces.py:frontier_sep_3k8

def frontier_sep_3k8(trial) -> tuple[nn.Module, dict]:  # a space of one point
    """tinymnist's frontier_sep_3k8 (sep_3k8, 3,768 parameters, and its recipe)."""
    from tinymnist.models import create_model

    return create_model("sep_3k8"), {"epochs": 15, "batch_size": 32, "lr": 0.2, "cycle_epochs": 11, "rotate": 5.0,
                                     "shift": 0.05, "scale": 0.0}


def frontier_2k5_trial_59(trial) -> tuple[nn.Module, dict]:  # a space of one point
    """Trial 59 of the study frontier-2k5 (2,108 parameters), its recipe as the study's export records it."""
    from tinymnist.models import create_model

    return create_model("tiny:w=8.12.20.20.20,pool=2,sep=2,sq=0"), {
        "epochs": 15, "batch_size": 32, "lr": 0.30443807204573564, "cycle_epochs": 12, "rotate": 2.843,
        "shift": 0.0203, "scale": 0.0203}


# --- a focused space for the bands between 4,000 and 6,000 parameters ----------------------------------------
# tinymnist search --study band-4k-6k --space examples/spaces.py:band_4k_6k --max-params 6000 --trials 200 \
#     --design 0 --workers 1 --storage sqlite:///band-4k-6k.db
BAND = (4000, 6000)  # parameters: more than the first, at most the second
AUGMENT = {"compact": {"rotate": 7.0, "shift": 0.05, "scale": 0.05},  # compact_step4's
           "mild": {"rotate": 4.0, "shift": 0.03, "scale": 0.03}}  # for models that underfit the compact one


def band_layouts() -> list[tuple[str, int]]:
    """Every layout of band_4k_6k inside BAND, as (WIDTHS-sepN, parameters): the space's size."""
    from tinymnist.models import tiny_params

    out = []
    for w1 in (8, 12):
        for w2 in (16, 24, 32):
            for width in (24, 32, 40, 48):
                for layers in (5, 6, 7):
                    for sep in (2, 3):
                        w = ".".join(map(str, [w1, w2] + [width] * (layers - 2)))
                        params = tiny_params(w, 2, sep)
                        if BAND[0] < params <= BAND[1]:
                            out.append((f"{w}-sep{sep}", params))  # no commas: a trial's parameters are k=v,...
    return out


def band_4k_6k(trial) -> tuple[nn.Module, dict]:  # an optuna Trial
    """Trial 13's shape (two layers, a max-pool, then equal-width layers, depthwise-separable from layer ``sep``)
    at compact_step4's recipe with weight averaging: one of the band's layouts (band_layouts: the first two
    widths, the width after the pool, the number of layers, where separable layers start), and one recipe
    setting (augmentation, compact or mild). Every sample is inside the band, so none is refused untrained."""
    from tinymnist.models import create_model

    layout = trial.suggest_categorical("layout", [name for name, _ in band_layouts()])
    augment = trial.suggest_categorical("augment", list(AUGMENT))
    widths, sep = layout.split("-sep")
    recipe = {"epochs": 15, "batch_size": 64, "lr": 0.2, "cycle_epochs": 11, "ema": 0.999, **AUGMENT[augment]}
    return create_model(f"tiny:w={widths},pool=2,sep={sep},sq=0"), recipe
