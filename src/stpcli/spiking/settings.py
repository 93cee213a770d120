"""How an SNN's neurons behave (recorded in every SNN checkpoint under ``snn``), torch-free so that
a record can be read and checked without building a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from stpcli.defaults import DEFAULT_RECIPE, INITIAL_MEMBRANE, RECIPES, SURROGATE_GAMMA
from stpcli.schema import NeuronRecord

# what a record that predates a setting meant by it (the record schema's defaults: the initial membrane
# was 0 and spikes carried V)
RECORD_DEFAULTS = {name: item.default for name, item in NeuronRecord.model_fields.items()}


@dataclass(frozen=True)
class SpikingSettings:
    """How an SNN's neurons behave; recorded in every SNN checkpoint under ``snn``."""

    surrogate_gamma: float = SURROGATE_GAMMA  # slope of the triangle surrogate
    dropout: float = 0.2  # hidden FC layers
    conv_dropout: float = 0.0  # after convolutional neuron layers
    initial_membrane: float = INITIAL_MEMBRANE  # fraction of the threshold
    spike_amplitude: str = "binary"  # DIET-SNN/TP; or "threshold" (stp's default in earlier releases; docs/results.md)
    conv_dropout_placement: str = "all"  # "all" conv neuron layers, or "unpooled" (TP/DIET-SNN; network.py)
    recipe: str = DEFAULT_RECIPE  # the recipe the SNN was converted with (later stages take its defaults)

    @property
    def binary(self) -> bool:
        return self.spike_amplitude == "binary"

    @classmethod
    def for_recipe(cls, recipe: str, **changes) -> SpikingSettings:
        """A recipe's neuron settings, with ``changes`` (options given explicitly) applied."""
        defaults = RECIPES[recipe]
        values: dict[str, Any] = {"initial_membrane": defaults.initial_membrane, "conv_dropout": defaults.conv_dropout,
                  "conv_dropout_placement": defaults.conv_dropout_placement, "recipe": recipe}
        values.update({k: v for k, v in changes.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_record(cls, snn: dict | None) -> SpikingSettings:
        """The settings an SNN checkpoint records; fields it predates take their original values."""
        snn = snn or {}
        return cls(**{name: snn.get(name, default) for name, default in RECORD_DEFAULTS.items()})

    def as_record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Conversion:
    """How ``convert`` sets an SNN's thresholds (recorded under ``snn.conversion``)."""

    percentile: float = RECIPES[DEFAULT_RECIPE].percentile
    scale: float = RECIPES[DEFAULT_RECIPE].scale  # threshold = scale x percentile
    calibration_images: int = 512
    balancing: str = RECIPES[DEFAULT_RECIPE].balancing  # "stp" | "reference" (spiking/convert.py)
    balance_steps: int | None = RECIPES[DEFAULT_RECIPE].balance_steps  # None: the conversion's T
    fold_thresholds: bool = RECIPES[DEFAULT_RECIPE].fold_thresholds  # binary spikes: V into the readers' weights

    @classmethod
    def for_recipe(cls, recipe: str, **changes) -> Conversion:
        """A recipe's conversion, with ``changes`` (options given explicitly) applied."""
        defaults = RECIPES[recipe]
        values: dict[str, Any] = {"percentile": defaults.percentile, "scale": defaults.scale, "balancing": defaults.balancing,
                  "balance_steps": defaults.balance_steps, "fold_thresholds": defaults.fold_thresholds}
        values.update({k: v for k, v in changes.items() if v is not None})
        return cls(**values)
