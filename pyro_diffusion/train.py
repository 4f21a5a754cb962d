"""
The SVI fitting loop: minibatches, the one-step estimator of the bound, a
decaying learning rate, progress and resumable state.
"""

import logging
import math
import signal
import threading
import time

import torch
from tqdm import tqdm

from pyro.infer import SVI

from .distributed import Placement, ShardedELBO
from .elbo import TimestepELBO
from .ema import ExponentialMovingAverage
from .optim import joint_clipped_adam
from .timesteps import ImportanceTimesteps, UniformTimesteps

logger = logging.getLogger(__name__)

__all__ = ["Trainer"]


class _DeferredInterrupt:
    """
    Defer Ctrl-C (SIGINT) to the end of the current SVI step, so that an
    interrupted run stops between steps and its saved state resumes exactly.
    A second Ctrl-C after ``repeat_window`` seconds interrupts at once. Only
    the main thread can install the handler; elsewhere Ctrl-C behaves as usual.

    :param float repeat_window: seconds after the first Ctrl-C during which a
        second one counts as the same. Wrappers such as ``timeout`` pass one
        Ctrl-C on as several signals microseconds apart, and under
        ``torchrun`` it reaches each worker twice, from the terminal and
        forwarded by the launcher.
    """

    def __init__(self, repeat_window=0.5):
        self.requested = False
        self.repeat_window = repeat_window
        self._first = None
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            if time.monotonic() - self._first < self.repeat_window:
                return
            raise KeyboardInterrupt
        # The time is set first, so a signal that lands between these lines finds both set.
        self._first = time.monotonic()
        self.requested = True
        logger.info("interrupt received: stopping after the current step")

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class Trainer:
    """
    Fit a :class:`~pyro_diffusion.model.DiffusionModel` by stock
    :class:`pyro.infer.SVI` with :class:`~pyro_diffusion.elbo.TimestepELBO`.

    :param DiffusionModel diffusion: the model to fit.
    :param PreparedData prepared: the data, see :mod:`pyro_diffusion.experiment`.
    :param RunConfig config: a resolved configuration.
    :param Placement placement: this process's place in a data-parallel run
        (see :mod:`pyro_diffusion.distributed`). With more than one shard per
        global batch, SVI's loss is a :class:`~pyro_diffusion.distributed.ShardedELBO`.
    """

    def __init__(self, diffusion, prepared, config, placement=None):
        self.diffusion = diffusion
        self.prepared = prepared
        self.config = config
        if config.timestep_sampling == "importance":
            self.sampler = ImportanceTimesteps()
        else:
            self.sampler = UniformTimesteps()
        decay = config.final_learning_rate_fraction ** (1.0 / max(config.steps, 1))
        # Pyro's clipped Adam update, with one optimizer for all parameter tensors.
        self.optimizer = joint_clipped_adam({"lr": config.learning_rate, "lrd": decay, "clip_norm": 10.0})
        self.placement = placement if placement is not None else Placement()
        self.sharded = None
        if self.placement.num_shards > 1:
            self.sharded = ShardedELBO(diffusion, self.sampler, self.placement, config.seed)
        loss = self.sharded if self.sharded is not None else TimestepELBO(sampler=self.sampler)
        self.svi = SVI(diffusion.model, diffusion.guide, self.optimizer, loss)
        self.ema = ExponentialMovingAverage(diffusion, config.ema_decay) if config.ema_decay > 0 else None
        self.step = 0
        #: False while a step is part way done, when the state must not be saved.
        self.between_steps = True
        self.seconds = 0.0
        self.data_generator = torch.Generator().manual_seed(config.seed + 1)
        torch.manual_seed(config.seed)

    def state_dict(self):
        """
        Everything needed to continue training where it stopped. With shards,
        every rank must call it, because it gathers the shards' random states.
        """
        state = {
            "step": self.step,
            "total_steps": self.config.steps,
            "seconds": self.seconds,
            "model": self.diffusion.state_dict(),
            "optimizer": self.optimizer.get_state(),
            "sampler": self.sampler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "torch_rng": torch.get_rng_state(),
            "data_rng": self.data_generator.get_state(),
        }
        if self.sharded is not None:
            state["shards"] = self.placement.num_shards
            state["shard_rng"] = self.sharded.gather_rng_states()
        return state

    def load_state_dict(self, state):
        saved_shards = int(state.get("shards", 1))
        if saved_shards != self.placement.num_shards:
            raise ValueError(
                f"--resume: the run was trained with its batch in S = {saved_shards} shard(s) and this launch "
                f"makes S = {self.placement.num_shards} (world size {self.placement.world_size} times --accumulate "
                f"{self.placement.accumulate}): launch so that the world size times --accumulate is {saved_shards}"
            )
        self.diffusion.load_state_dict(state["model"])
        self.optimizer.set_state(state["optimizer"])
        # The saved decay spreads the schedule over the saved --steps; a
        # resumed run with more steps spreads what is left over the new total.
        if state.get("total_steps") != self.config.steps:
            self._respread_decay(int(state["step"]))
        self.sampler.load_state_dict(state["sampler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"])
        self.data_generator.set_state(state["data_rng"])
        if self.sharded is not None:
            self.sharded.load_rng_states(state["shard_rng"])
        self.step = int(state["step"])
        self.seconds = float(state["seconds"])

    def _respread_decay(self, step):
        final = self.config.learning_rate * self.config.final_learning_rate_fraction
        remaining = self.config.steps - step
        for name, optimizer_state in self.optimizer._state_waiting_to_be_consumed.items():
            for group in optimizer_state["param_groups"]:
                if remaining > 0 and group["lr"] > 0:
                    group["lrd"] = (final / group["lr"]) ** (1.0 / remaining)

    def fit(self, progress=False, on_checkpoint=None, checkpoint_every=1000):
        """
        Run SVI steps until ``config.steps`` have been taken.

        :param bool progress: show a tqdm progress bar.
        :param on_checkpoint: called with no arguments every ``checkpoint_every`` steps.
        :returns: the training bound of the last steps, in bits per dimension
            (a running mean over minibatches; higher is better).
        """
        self.diffusion.train()
        train = self.prepared.train
        batch_size = min(self.config.batch_size, len(train))
        dim = self.prepared.dim
        running = None
        bar = tqdm(
            total=self.config.steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True
        )
        started = time.perf_counter()
        interrupt = _DeferredInterrupt(repeat_window=2.0 if self.placement.world_size > 1 else 0.5)
        if self.sharded is not None:
            self.sharded.stop_requested = lambda: interrupt.requested
        try:
            while self.step < self.config.steps:
                if self._stop_requested(interrupt):
                    raise KeyboardInterrupt
                # From here until the step count moves on, the state is part way through a step.
                self.between_steps = False
                index = torch.randint(0, len(train), (batch_size,), generator=self.data_generator)
                batch = self.prepared.model_scale(train[index], self.data_generator)
                try:
                    loss = self.svi.step(batch)
                except ValueError as error:
                    self._raise_if_diverged(error)
                    raise
                if not math.isfinite(loss):
                    self._raise_if_diverged(None)
                if self.ema is not None:
                    self.ema.update(self.diffusion)
                bits = -loss / batch_size / dim / math.log(2)
                running = bits if running is None else 0.98 * running + 0.02 * bits
                self.step += 1
                self.between_steps = True
                bar.update(1)
                if self.step % 50 == 0:
                    bar.set_postfix_str(f"train bound {running:.3f} bits/dim")
                if on_checkpoint is not None and self.step % checkpoint_every == 0:
                    self.seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    on_checkpoint()
            if self._stop_requested(interrupt):
                raise KeyboardInterrupt
        finally:
            interrupt.restore()
            self.seconds += time.perf_counter() - started
            bar.close()
            self.diffusion.eval()
        logger.info("trained %d steps in %.1f s", self.step, self.seconds)
        return running

    def _stop_requested(self, interrupt):
        # Ranks stop at the step where any of them saw Ctrl-C, as the last step's all-reduce agreed.
        if self.sharded is not None:
            return self.sharded.stop_agreed
        return interrupt.requested

    def _raise_if_diverged(self, error):
        diverged = error is None or any(
            not torch.isfinite(p).all() for p in self.diffusion.parameters()
        ) or "invalid values" in str(error)
        if diverged:
            raise ValueError(
                f"training diverged at step {self.step + 1}: the loss or the network became NaN or infinite; "
                f"lower --learning-rate (now {self.config.learning_rate})"
            ) from error

    def evaluation_model(self):
        """
        :returns: the model to sample and evaluate with, in eval mode: a copy
            holding the moving-average weights when EMA is on, else the
            trained model itself.
        """
        model = self.ema.averaged(self.diffusion) if self.ema is not None else self.diffusion
        return model.eval()
