"""How an SNN's neurons behave (recorded in every SNN checkpoint under ``snn``), torch-free so that
a record can be read and checked without building a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from stpcli.defaults import INITIAL_MEMBRANE, SURROGATE_GAMMA

# what a record that predates a setting meant by it: the initial membrane was 0 and spikes carried V
RECORD_DEFAULTS = {"surrogate_gamma": SURROGATE_GAMMA, "dropout": 0.2, "conv_dropout": 0.0, "initial_membrane": 0.0,
                   "spike_amplitude": "threshold"}


@dataclass(frozen=True)
class SpikingSettings:
    """How an SNN's neurons behave; recorded in every SNN checkpoint under ``snn``."""

    surrogate_gamma: float = SURROGATE_GAMMA  # slope of the triangle surrogate
    dropout: float = 0.2  # hidden FC layers
    conv_dropout: float = 0.0  # after convolutional neuron layers
    initial_membrane: float = INITIAL_MEMBRANE  # fraction of the threshold
    spike_amplitude: str = "binary"  # DIET-SNN/TP; or "threshold" (stp's default in earlier releases; docs/results.md)

    @property
    def binary(self) -> bool:
        return self.spike_amplitude == "binary"

    @classmethod
    def from_record(cls, snn: dict | None) -> SpikingSettings:
        """The settings an SNN checkpoint records; fields it predates take their original values."""
        snn = snn or {}
        return cls(**{name: snn.get(name, default) for name, default in RECORD_DEFAULTS.items()})

    def as_record(self) -> dict:
        return asdict(self)


