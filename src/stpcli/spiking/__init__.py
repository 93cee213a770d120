"""The spiking core: LIF neurons, the time-folded SNN, conversion and energy."""
