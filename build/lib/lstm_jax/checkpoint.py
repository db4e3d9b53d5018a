"""Checkpoints with orbax's CheckpointManager.

One checkpoint = two items under `WORKDIR/checkpoints/<step>/`:
  state: the arrays (params, optimizer state, step, carried state, RNG key data),
         saved with orbax's StandardSave;
  meta:  JSON: the data position, the tokenizer, the resolved config and the
         validation loss, so a sampler needs nothing but the workdir.

Kept: the latest `keep` checkpoints plus the best one by validation loss.
Orbax writes each checkpoint to a temporary directory and renames it when
complete, so an interrupted save never replaces a good checkpoint. No pickle.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the current run."""


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, keep: int = 2, *, read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(n=max(1, keep)),
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m["val_loss"],
                    reverse=True,  # smaller is better (orbax's best_mode="min")
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            create=not read_only,
            read_only=read_only,
            # Synchronous: the train step donates its state buffers, and a save
            # must have finished reading them before the next step reuses them.
            enable_async_checkpointing=False,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: Any, meta: dict, val_loss: float | None = None) -> None:
        metrics = None if val_loss is None else {"val_loss": float(val_loss)}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            metrics=metrics,
            force=True,
        )
        self.manager.wait_until_finished()

    def resolve_step(self, which: str | int | None = "latest") -> int:
        """'latest', 'best' or a step number -> a step that exists."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if which in (None, "latest"):
            return steps[-1]
        if which == "best":
            best = self.best_step()
            if best is None:
                raise CheckpointError(
                    f"no checkpoint in {self.directory} has a validation loss; "
                    "use --checkpoint=latest"
                )
            return best
        step = int(which)
        if step not in steps:
            raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; have {steps}")
        return step

    def restore_meta(self, step: int) -> dict:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
                "meta"
            ]
        except Exception as e:  # orbax raises several types for unreadable files
            raise self._corrupt(step, e) from e

    def restore_state(self, step: int, target: Any) -> Any:
        """Restore the arrays into the structure, shapes and dtypes of `target`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
        except Exception as e:
            raise self._corrupt(step, e) from e
        return restored["state"]

    def _corrupt(self, step: int, error: Exception) -> CheckpointError:
        others = [s for s in self.all_steps() if s != step]
        return CheckpointError(
            f"cannot read checkpoint {self.directory / str(step)} ({type(error).__name__}: "
            f"{str(error)[:300]}). It is corrupt or was written for another model. "
            f"Other checkpoints here: {others or 'none'}; move the bad one away to resume "
            "from an earlier step, or use a new --workdir."
        )

    def close(self) -> None:
        self.manager.close()
