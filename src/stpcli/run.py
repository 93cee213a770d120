"""The context of one running command: its runtime, console and name, and where it reads images.

Every stage, report and study receives a ``Run``; the CLI builds one per command
(``cli/common.make_run``) and a Python caller builds its own:
``Run("notebook", setup_runtime("cpu"))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from rich.console import Console

from stpcli.checkpoint import Checkpoint
from stpcli.data.source import SplitData, load_recorded_data
from stpcli.engine.runtime import Runtime
from stpcli.options import DataOptions
from stpcli.progress import progress_bar


@dataclass
class Run:
    """A running command: runtime, console, and the stage its lineage entry records (``name``;
    ``label`` is how its progress lines and training curves name it, e.g. "temporal-prune T=2")."""

    name: str
    runtime: Runtime
    console: Console = field(default_factory=Console)
    label: str = ""

    def __post_init__(self):
        self.label = self.label or self.name

    def say(self, text: str) -> None:
        if self.runtime.is_main:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def named(self, name: str, label: str | None = None) -> Run:
        """This run under a stage's own name (and display label): the lineage records what ran,
        whoever called it."""
        return replace(self, name=name, label=label or name)

    def progress(self, label: str):
        """A progress bar on the main rank's terminal; yields ``advance(count, total=None)``."""
        return progress_bar(self.console, label, show=self.runtime.is_main)


def load_checkpoint_data(run: Run, ckpt: Checkpoint, options: DataOptions) -> SplitData:
    """The images and split a checkpoint records (verified by fingerprint), decoded once."""
    with run.progress("decoding images") as advance:
        return load_recorded_data(ckpt.record, options.location, options.allow_data_change,
                                  options.on_bad_image, options.cache_dir, progress=advance)
