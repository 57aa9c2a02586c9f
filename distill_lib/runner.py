"""The runner of a distillation: checkpoints, resume, interruption and progress around :class:`Distiller`'s maths.

:func:`distill` drives a :class:`~distill_lib.distill.Distiller` to its iteration count under the
:class:`~distill_lib.options.RunOptions` given: it writes the run's state to a checkpoint file (periodically, at
the end, on Ctrl-C, before a non-finite step), resumes from one to exactly the uninterrupted result, and turns
interruptions, diverging steps and a failed peer process into messages that say what was kept and how to continue.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from . import distributed
from .data import RealData
from .distill import DistillConfig, Distiller, NonFiniteStep
from .files import BadFileError, atomic_save, load_torch
from .options import RunOptions
from .synthetic import SyntheticSet

CHECKPOINT_KEYS = ("config", "iteration", "images", "optimizer", "history")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`distill`; the message says what was saved and how to continue."""


def read_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`distill`; any other file is a :class:`BadFileError` saying what it is."""
    state = load_torch(path, "distillation checkpoint")
    if isinstance(state, dict) and {"images", "labels", "metadata"} <= state.keys():
        raise BadFileError(path, "is a saved synthetic set, not a checkpoint (resume continues from the file written "
                                 "to the checkpoint path, --checkpoint)")
    if not isinstance(state, dict) or not set(CHECKPOINT_KEYS) <= state.keys():
        raise BadFileError(path, f"is not a distillation checkpoint (needs {', '.join(CHECKPOINT_KEYS)})")
    return state


def save_checkpoint(run: Distiller, path: Path) -> None:
    """Gather the run's state on every process, write it from rank 0 (atomically: the last good state survives)."""
    state = run.state_dict()
    if distributed.is_main():
        atomic_save(state, path)


def distill(config: DistillConfig, data: RealData, checkpoint: str | Path | None = None, resume: bool = False,
            progress: bool = True, options: RunOptions = RunOptions()) -> SyntheticSet:
    """Run (or continue) a distillation and return the synthetic set.

    ``checkpoint``: a file written atomically every ``options.checkpoint_every`` iterations, at the end, and when the
    run is interrupted (Ctrl-C, which raises :class:`Interrupted`). ``resume=True`` continues from it when it exists,
    to exactly the result an uninterrupted run would give. A loss term or pixel that turns NaN or infinite stops the
    run with a ``ValueError`` naming the iteration and the term; with a checkpoint path, the state before that step
    (the last finite one; see :meth:`~distill_lib.distill.Distiller.step`) is written there first.

    Under torchrun every process calls this with the same arguments: each holds its share of the classes, rank 0
    reads and writes the checkpoint and shows progress, and all return the whole set. A checkpoint resumes at any
    number of processes. On Ctrl-C with several processes the last periodic checkpoint is the state kept.
    """
    if options.checkpoint_every and checkpoint is None:
        raise ValueError("checkpoint_every > 0 needs a checkpoint path")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    run = Distiller(config, data, options, progress)
    if resume:
        state = distributed.from_main(lambda: read_checkpoint(checkpoint) if checkpoint.exists() else None)
        if state is not None:
            try:
                run.load_state_dict(state)
            except (KeyError, RuntimeError, TypeError, IndexError) as err:  # right keys, wrong contents
                raise BadFileError(checkpoint, f"holds a damaged checkpoint ({type(err).__name__}: {err})") from None
    if run.iteration > config.iterations:
        raise ValueError(f"checkpoint is at iteration {run.iteration}, beyond iterations={config.iterations}")
    bar = tqdm(total=config.iterations, initial=run.iteration, desc=f"distill {config.dataset} ipc{config.ipc}",
               disable=not (progress and distributed.is_main()))
    if run.queue is not None and not bar.disable:
        tqdm.write(config.queue.cost(), file=sys.stderr)
        run.queue.on_step = bar.set_postfix_str
    try:
        while run.iteration < config.iterations:
            try:
                record = run.step()
            except NonFiniteStep as err:
                if checkpoint is not None:
                    save_checkpoint(run, checkpoint)  # the step left the state as it was: the last finite one
                kept = (f"the last finite state (iteration {run.iteration}) is saved in {checkpoint}"
                        if checkpoint is not None else "no checkpoint was kept (a checkpoint path, --checkpoint, "
                                                       "keeps the last finite state)")
                raise ValueError(f"{err}; stopped ({kept}). A smaller lr_img (--lr-img) or smaller loss weights "
                                 f"usually keep the run finite") from None
            bar.update(1)
            if run.iteration % 10 == 0 or run.iteration == config.iterations:
                bar.set_postfix(loss=f"{record['loss']:.4g}")
            if checkpoint is not None and options.checkpoint_every and run.iteration % options.checkpoint_every == 0:
                save_checkpoint(run, checkpoint)
    except distributed.PeerFailure as err:
        if checkpoint is None:
            raise
        raise distributed.PeerFailure(f"{err}. {checkpoint} keeps the last saved state: run the same command with "
                                      f"resume (--resume), at any number of processes") from err
    except KeyboardInterrupt:
        if checkpoint is None:
            raise Interrupted(f"interrupted at iteration {run.iteration}; nothing saved (a checkpoint path, "
                              f"--checkpoint, keeps the state for resume)") from None
        if distributed.active():  # the others may be an iteration apart or gone: no collective save is safe
            message = f"interrupted at iteration {run.iteration}; {checkpoint} keeps the last periodic checkpoint"
        else:
            save_checkpoint(run, checkpoint)
            message = f"interrupted at iteration {run.iteration}; state saved to {checkpoint}"
        message += ": run the same command with resume (--resume) to continue"
        warnings.warn(message)
        raise Interrupted(message) from None
    finally:
        bar.close()
    if checkpoint is not None:
        save_checkpoint(run, checkpoint)
    return run.result()
