"""Where a stage writes and how: the output's checks and lock, the child record, the checkpoint file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stpcli.checkpoint import Checkpoint, StageEntry, load_checkpoint, save_checkpoint
from stpcli.defaults import with_unrecorded
from stpcli.errors import StpError
from stpcli.files import check_output, clear_stale, lock_holder, lock_output, remove_leftovers, sha256_file
from stpcli.names import CHECKPOINT_SUFFIX, curves_path, metrics_path, state_path
from stpcli.run import Run


@dataclass
class StageIO:
    """Where a stage writes, and how it treats what is already there."""

    out: Path
    force: bool = False
    resume: bool = False
    command: str = ""  # the command line the lineage records (empty for a Python call)
    if_changed: bool = False  # make's rule, by lineage: see ``current``

    @property
    def state_path(self) -> Path:
        return state_path(self.out)

    @property
    def csv_path(self) -> Path:
        return metrics_path(self.out)

    @property
    def plot_path(self) -> Path:
        return curves_path(self.out)

    @property
    def companions(self) -> tuple[Path, ...]:
        """The output and every file written beside it: training state, metrics CSV, curves."""
        return (self.out, self.state_path, self.csv_path, self.plot_path)

    def current(self, run: Run, parent: Checkpoint | None, options: dict) -> Checkpoint | None:
        """The rule ``--if-changed`` (the Makefile, ``stp pipeline`` and ``stp study``) reruns a stage
        by, called before ``check``: an output this stage made from the same input (by sha256) with the
        same ``options`` is returned, as it is (nothing to do); one made otherwise is rebuilt, saying
        what changed; an interrupted run is resumed from its state file (or started over, saying so,
        when its options differ)."""
        if not self.if_changed:
            return None
        if self.out.is_file():
            existing, reasons = made_otherwise(self.out, run.name, parent, options)
            if not reasons:
                run.say(f"[{run.label}] {self.out} is up to date (same input, same options); nothing to do")
                return existing
            run.say(f"[{run.label}] rebuilding {self.out}: " + "; ".join(reasons))
            self.force = True
        self.resume = self.state_path.exists()
        return None

    def check(self, will_train: bool, inputs: tuple[Path | None, ...] = (), resume_needs_state: bool = True,
              also: tuple[Path, ...] = ()) -> None:
        """Everything about the output that can fail, checked before any data is read; then the
        output is locked against a second writer. First of all, what a killed run left (stale locks,
        temporaries of the output and its companions, and of ``also``: temporal pruning's other T
        files) is cleared, so neither a refusal nor a later success leaves it behind."""
        if lock_holder(self.out) is None:  # a live writer's files are its own; lock_output refuses below
            for path in self.companions + tuple(c for other in also for c in StageIO(other).companions):
                clear_stale(path)
        if self.if_changed and not will_train:
            self.resume = False  # a state file of an earlier run that trained: nothing here resumes it
        check_output(self.out, self.force, inputs, suffix=CHECKPOINT_SUFFIX)
        if self.resume and not will_train:
            raise StpError("--resume needs a stage that trains (--epochs > 0)")
        if self.resume and resume_needs_state and not self.state_path.exists():
            raise StpError(f"--resume: no training state {self.state_path} to resume from")
        if will_train and self.state_path.exists() and not (self.resume or self.force):
            raise StpError(f"an interrupted run left {self.state_path}; pass --resume to continue it "
                           "or --force to start over")
        lock_output(self.out)


LOCATING_OPTIONS = ("data", "allow-data-change", "on-bad-image", "cache-dir")
"""Where a later stage finds the data its input records (checked by fingerprint), not what it makes."""
SAME_RESULT_OPTIONS = ("lif-backend", "teacher")
"""Recorded, but not options a rerun compares: LIF backends give the same results; a teacher is an input."""


def made_otherwise(path: Path, stage: str, parent: Checkpoint | None, options: dict,
                   expect_kind: str | None = None) -> tuple[Checkpoint | None, list[str]]:
    """(the checkpoint at ``path``, why it is not what ``stage`` makes from ``parent`` with
    ``options``: nothing when it is)."""
    try:
        existing = load_checkpoint(path, expect_kind=expect_kind)
    except StpError as exc:
        return None, [f"it does not read ({exc})"]
    return existing, differences(existing.history[-1] if existing.history else {}, stage, parent, options)


def differences(entry: dict, stage: str, parent: Checkpoint | None, options: dict) -> list[str]:
    """Why a checkpoint whose last lineage entry is ``entry`` is not what ``stage`` makes from
    ``parent`` with ``options``: another stage, another input, options with other values."""
    if entry.get("stage") != stage:
        return [f"it was made by {entry.get('stage') or 'another tool'}, not {stage}"]
    reasons = []
    if parent is not None and (entry.get("parent") or {}).get("sha256") != parent.sha256:
        reasons.append(f"its input {parent.path} changed")
    options = json.loads(json.dumps(options))  # as the record holds them
    recorded = with_unrecorded(entry.get("options") or {}, options)
    ignored = set(SAME_RESULT_OPTIONS) | (set(LOCATING_OPTIONS) if parent is not None else set())
    changed = [f"--{key} {_shown(recorded.get(key, '(not recorded)'))} -> {_shown(options[key])}"
               for key in sorted(options) if key not in ignored and recorded.get(key, _MISSING) != options[key]]
    return reasons + ([("options changed: " + ", ".join(changed))] if changed else [])


_MISSING = object()


def _shown(value) -> str:
    return "default" if value is None else str(value)


def child_record(parent: Checkpoint, **changes) -> dict:
    """The parent's record with ``changes``, less what describes the parent's file itself."""
    record = {k: v for k, v in parent.record.items() if k not in ("created", "tool_version")}
    record.update(changes)
    return record


def finish_stage(run: Run, model, record: dict, entry: StageEntry, io: StageIO,
                 parent: Checkpoint | None, extra: dict | None = None) -> Checkpoint:
    """Attach the lineage entry and write the checkpoint (rank 0) with the model's tensors and
    ``extra`` ones, then drop the state file."""
    if parent is not None and parent.path is not None:
        entry.parent_path = str(parent.path.resolve())
        entry.parent_sha256 = parent.sha256
    history = list(parent.history) if parent is not None else []
    record = dict(record)
    record["history"] = history + [entry.as_dict()]
    record["metrics"] = entry.metrics
    tensors = {k: v.detach().cpu() for k, v in {**model.state_dict(), **(extra or {})}.items()}
    ckpt = Checkpoint(tensors=tensors, record=record)
    if run.runtime.is_main:
        save_checkpoint(ckpt, io.out)
        if io.state_path.exists():
            io.state_path.unlink()
        remove_leftovers(io.state_path)
    run.runtime.barrier()
    if not run.runtime.is_main:
        ckpt.path, ckpt.sha256 = io.out, sha256_file(io.out)
    return ckpt
