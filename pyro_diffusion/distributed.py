r"""
Data-parallel training on :mod:`torch.distributed`, launched by ``torchrun``.

Every process keeps a full copy of the model. The global batch of ``B``
examples is split into ``S = W * A`` equal shards, for ``W`` processes that
each run ``A`` shards one after another (gradient accumulation). Process
``r`` runs shards ``r * A .. r * A + A - 1``.

What makes the result independent of how shards map to processes:

- Every process draws the indices of the whole global batch from a data
  generator seeded identically on every rank, and shard ``g`` is chunk ``g``
  of that batch.
- Shard ``g`` has its own torch random state, seeded from ``(seed, g)``. It
  is swapped into torch's global generator, which Pyro's sampling and
  dropout use, around that shard's forward and backward pass.
- A stateful time-step proposal (importance sampling) draws every shard of
  a step from the same state and records the terms of all shards, in shard
  order, after the step.
- Gradients are summed over shards: each process scales its loss by ``W``
  and :class:`~torch.nn.parallel.DistributedDataParallel` averages over
  ``W``, so with ``W`` a power of two the sum matches a single process that
  accumulates the same shards.

So a run depends only on ``(seed, B, S)``. Two processes with ``A = 1`` give
the same parameters as one process with ``A = 2``, within float rounding.
"""

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyro.infer import ELBO

from .elbo import TimestepELBO

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedSetupError",
    "Placement",
    "ShardedELBO",
    "backend_for",
    "check_batch_size",
    "placement_from_environment",
    "process_group",
    "run_on_all_ranks",
    "run_on_main",
    "shard_seed",
]

#: The variables ``torchrun`` sets for each process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedSetupError(ValueError):
    """An invalid launch or a failed rendezvous; every rank raises it with the same message."""


@dataclass(frozen=True)
class Placement:
    """
    The position of this process in a data-parallel run.

    :ivar int rank: this process's global rank, ``0 .. world_size - 1``.
    :ivar int world_size: ``W``, the number of processes.
    :ivar int local_rank: this process's rank on its own machine.
    :ivar int accumulate: ``A``, the shards each process runs per step.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    accumulate: int = 1

    @property
    def num_shards(self):
        """``S = W * A``, the shards of one global batch."""
        return self.world_size * self.accumulate

    @property
    def is_main(self):
        """Whether this process is rank 0, the one that writes the run folder."""
        return self.rank == 0

    @property
    def local_shards(self):
        """The global indices of the shards this process runs."""
        return range(self.rank * self.accumulate, (self.rank + 1) * self.accumulate)


def _integer_variable(environ, name):
    text = environ.get(name)
    try:
        return int(text)
    except (TypeError, ValueError):
        raise DistributedSetupError(
            f"the environment variable {name}={text!r} is not an integer: launch with torchrun, which sets it"
        ) from None


def placement_from_environment(accumulate=1, environ=None):
    """
    Read this process's place from the variables ``torchrun`` sets.

    Without ``WORLD_SIZE`` the run is one process. With ``WORLD_SIZE`` above
    1, ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` must be set as well.

    :param int accumulate: ``A``, the shards each process runs per step.
    :param dict environ: the environment (default :data:`os.environ`).
    :rtype: Placement
    :raises DistributedSetupError: naming a missing or invalid variable.
    """
    environ = os.environ if environ is None else environ
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise DistributedSetupError(f"--accumulate must be an integer >= 1, got {accumulate!r}")
    if "WORLD_SIZE" not in environ:
        return Placement(accumulate=accumulate)
    world_size = _integer_variable(environ, "WORLD_SIZE")
    if world_size < 1:
        raise DistributedSetupError(f"WORLD_SIZE must be >= 1, got {world_size}")
    if world_size == 1:
        return Placement(accumulate=accumulate)
    missing = [name for name in TORCHRUN_VARIABLES if name != "LOCAL_RANK" and not environ.get(name)]
    if missing:
        raise DistributedSetupError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set, so there is no rendezvous to join: "
            "launch with 'torchrun --nproc_per_node N', or set RANK, MASTER_ADDR and MASTER_PORT on every process"
        )
    rank = _integer_variable(environ, "RANK")
    if not 0 <= rank < world_size:
        raise DistributedSetupError(f"RANK={rank} is outside 0..{world_size - 1} for WORLD_SIZE={world_size}")
    local_rank = _integer_variable(environ, "LOCAL_RANK") if environ.get("LOCAL_RANK") else 0
    return Placement(rank=rank, world_size=world_size, local_rank=local_rank, accumulate=accumulate)


def check_batch_size(batch_size, placement):
    """
    Check that the global batch splits into ``S = W * A`` equal shards.

    :raises DistributedSetupError: naming ``B``, ``W``, ``A`` and the nearest valid batch sizes.
    """
    shards = placement.num_shards
    if batch_size % shards == 0:
        return
    below = batch_size // shards * shards
    above = below + shards
    choices = f"{below} or {above}" if below > 0 else f"{above}"
    raise DistributedSetupError(
        f"--batch-size {batch_size} does not split into {shards} equal shards (world size W = "
        f"{placement.world_size} processes times --accumulate A = {placement.accumulate}): pass a "
        f"--batch-size that is a multiple of {shards}, such as {choices}, or change the number of processes or A"
    )


def backend_for(device):
    """
    :param torch.device device: the device the model trains on.
    :returns: ``"nccl"`` for a CUDA device when CUDA is available, else ``"gloo"``.
    """
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return "nccl"
    return "gloo"


@contextlib.contextmanager
def process_group(placement, timeout_seconds, device="cpu"):
    """
    Join the process group of ``placement`` through the ``env://`` rendezvous
    that ``torchrun`` sets up, and leave it on exit.

    :param Placement placement: with ``world_size > 1``.
    :param float timeout_seconds: how long to wait for peers, at the
        rendezvous and at each collective call.
    :param device: the model's device, which selects the backend.
    :raises DistributedSetupError: when the rendezvous fails or times out.
    """
    backend = backend_for(device)
    # NOTE: the command line trains on CPU, so the NCCL branch and the CUDA
    # random states of ShardedELBO have never run. The tests cover gloo on CPU.
    if backend == "nccl":
        torch.cuda.set_device(placement.local_rank)
    address = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    try:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=placement.rank,
            world_size=placement.world_size,
            timeout=datetime.timedelta(seconds=timeout_seconds),
        )
    except (RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split())[:300]
        raise DistributedSetupError(
            f"rank {placement.rank}: the rendezvous of {placement.world_size} processes at {address} failed "
            f"within {timeout_seconds:g} s ({type(error).__name__}: {reason}); check that every process "
            "starts with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE and can reach that address"
        ) from error
    logger.info("rank %d of %d joined the %s process group at %s", placement.rank, placement.world_size, backend, address)
    try:
        yield
    finally:
        dist.destroy_process_group()


def run_on_main(function, placement):
    """
    Call ``function`` on rank 0 only and pass its result, or the exception
    it raised, to every rank. The result and the exception must be picklable.

    :returns: ``function()``'s result, on every rank.
    """
    if placement.world_size == 1:
        return function()
    payload = [None]
    if placement.is_main:
        try:
            payload[0] = (None, function())
        except Exception as error:
            payload[0] = (error, None)
    dist.broadcast_object_list(payload, src=0)
    error, result = payload[0]
    if error is not None:
        raise error
    return result


def run_on_all_ranks(function, placement):
    """
    Call ``function`` on every rank, and raise on every rank when any of
    them raised, so that no rank waits for a peer that has stopped. A rank
    that failed raises its own exception; the others raise
    :class:`DistributedSetupError` naming the first failed rank.

    :returns: ``function()``'s result on this rank.
    """
    if placement.world_size == 1:
        return function()
    result, own_error, failure = None, None, None
    try:
        result = function()
    except Exception as error:
        own_error = error
        failure = (type(error).__name__, " ".join(str(error).split()))
    failures = [None] * placement.world_size
    dist.all_gather_object(failures, failure)
    if own_error is not None:
        raise own_error
    for rank, failed in enumerate(failures):
        if failed is not None:
            name, message = failed
            raise DistributedSetupError(f"rank {rank} failed ({name}): {message}")
    return result


def shard_seed(seed, shard):
    """
    :returns: the seed of shard ``shard``'s random stream, a function of
        ``(seed, shard)`` only, in ``[0, 2**63)``.
    """
    state = np.random.SeedSequence([int(seed), int(shard)]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


class _ShardLoss(nn.Module):
    """The negative bound of one shard, the module that DistributedDataParallel wraps."""

    def __init__(self, diffusion, elbo):
        super().__init__()
        self.diffusion = diffusion
        self.elbo = elbo

    def forward(self, x0):
        """
        :param torch.Tensor x0: one shard, ``[B / S] + event_shape``.
        :returns: the negative ELBO estimate summed over the shard, in nats, a scalar.
        """
        return self.elbo.differentiable_loss(self.diffusion.model, self.diffusion.guide, x0)


class _DeferredUpdates:
    """
    A time-step proposal whose draws all use the state at the start of a
    step. It keeps the terms it is given until :meth:`pop`.
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self.pending = []

    def probabilities(self, num_steps):
        return self.sampler.probabilities(num_steps)

    def draw(self, batch_size, num_steps, device=None, generator=None):
        return self.sampler.draw(batch_size, num_steps, device, generator)

    def update(self, t, terms):
        self.pending.append((t.detach().cpu().double(), terms.detach().cpu().double()))

    def pop(self, shard_size):
        """
        :returns: the terms recorded since the last call, ``[2, shard_size]``
            float64, steps in row 0 and terms in row 1. Both rows are NaN when
            nothing was recorded (``T = 1``).
        """
        if not self.pending:
            return torch.full((2, shard_size), float("nan"), dtype=torch.float64)
        if len(self.pending) != 1:
            raise RuntimeError(f"expected one recorded draw per shard, got {len(self.pending)}")
        t, terms = self.pending.pop()
        return torch.stack([t, terms])


class ShardedELBO(ELBO):
    """
    The loss of stock :class:`pyro.infer.SVI` for a global batch split into
    ``S`` shards over ``W`` processes: :class:`~pyro_diffusion.elbo.TimestepELBO`
    on each shard, with gradients summed over all shards through
    :class:`~torch.nn.parallel.DistributedDataParallel` when ``W > 1``.

    :param DiffusionModel diffusion: the model, the same on every rank.
    :param sampler: the time-step proposal shared with the trainer.
    :param Placement placement: this process's place.
    :param int seed: the run's seed; shard ``g`` draws from ``shard_seed(seed, g)``.

    :ivar stop_requested: a callable returning this rank's Ctrl-C flag, read
        once per step.
    """

    def __init__(self, diffusion, sampler, placement, seed):
        super().__init__()
        self.placement = placement
        self.sampler = sampler
        self.updates = _DeferredUpdates(sampler)
        self.module = _ShardLoss(diffusion, TimestepELBO(sampler=self.updates))
        self.device = diffusion.device
        self.stop_requested = lambda: False
        self._stop_agreed = False
        self.rng_states = [self._initial_rng(seed, shard) for shard in placement.local_shards]
        self.parallel = None
        if placement.world_size > 1:
            # The schedule tables are constant buffers, so they are synchronized
            # once, at construction, and not before each forward pass. Every
            # parameter of the shipped models gets a gradient at every step,
            # which DistributedDataParallel needs without find_unused_parameters.
            self.parallel = DistributedDataParallel(self.module, forward_sync_buffers=False)

    def _initial_rng(self, seed, shard):
        state = {"cpu": torch.Generator().manual_seed(shard_seed(seed, shard)).get_state()}
        if self.device.type == "cuda":
            generator = torch.Generator(device=self.device).manual_seed(shard_seed(seed, shard))
            state["cuda"] = generator.get_state()
        return state

    @contextlib.contextmanager
    def _shard_random_state(self, index):
        saved_cpu = torch.get_rng_state()
        saved_cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        torch.set_rng_state(self.rng_states[index]["cpu"])
        if saved_cuda is not None:
            torch.cuda.set_rng_state(self.rng_states[index]["cuda"], self.device)
        try:
            yield
        finally:
            self.rng_states[index]["cpu"] = torch.get_rng_state()
            torch.set_rng_state(saved_cpu)
            if saved_cuda is not None:
                self.rng_states[index]["cuda"] = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(saved_cuda, self.device)

    def _shards(self, batch):
        shards = self.placement.num_shards
        if batch.shape[0] % shards != 0:
            raise ValueError(f"a batch of {batch.shape[0]} examples does not split into {shards} equal shards")
        size = batch.shape[0] // shards
        return size, [batch[g * size : (g + 1) * size] for g in self.placement.local_shards]

    @property
    def stop_agreed(self):
        """Whether any rank requested a stop, as the last step's all-reduce agreed, or this process's own flag when ``W = 1``."""
        if self.placement.world_size == 1:
            return bool(self.stop_requested())
        return self._stop_agreed

    def loss_and_grads(self, model, guide, batch):
        """
        Run the forward and backward pass of this rank's shards, leaving in
        each parameter's ``.grad`` the gradient of the negative bound summed
        over the whole global batch.

        :param model: unused, because the wrapped module runs the model's own program.
        :param guide: unused, as ``model``.
        :param torch.Tensor batch: the global batch, ``[B] + event_shape``, the same on every rank.
        :returns: the negative ELBO estimate summed over the global batch, in nats.
        :rtype: float
        """
        size, shards = self._shards(batch)
        world_size = self.placement.world_size
        local_loss = torch.zeros((), dtype=torch.float64)
        recorded = []
        for index, shard in enumerate(shards):
            last = index == len(shards) - 1
            # Gradients are all-reduced once, in the backward pass of the last local shard.
            synchronization = self.parallel.no_sync() if self.parallel is not None and not last else contextlib.nullcontext()
            forward = self.parallel if self.parallel is not None else self.module
            with synchronization, self._shard_random_state(index):
                loss = forward(shard)
                if loss.requires_grad:
                    # DistributedDataParallel averages over W ranks; the factor W makes that a sum.
                    (loss * world_size).backward()
            local_loss += loss.detach().cpu().double()
            recorded.append(self.updates.pop(size))
        recorded = torch.stack(recorded)
        return self._combine(local_loss, recorded)

    def _combine(self, local_loss, recorded):
        """
        :param torch.Tensor local_loss: this rank's summed loss, a float64 scalar.
        :param torch.Tensor recorded: ``[A, 2, B / S]``, the steps and terms of each local shard.
        :returns: the global loss. Every shard's terms go to the time-step
            proposal in shard order.
        """
        if self.placement.world_size == 1:
            total = float(local_loss)
            everything = recorded
        else:
            summary = torch.stack([local_loss, torch.tensor(float(bool(self.stop_requested())), dtype=torch.float64)])
            summary = summary.to(self.device)
            dist.all_reduce(summary)
            gathered = [torch.empty_like(recorded).to(self.device) for _ in range(self.placement.world_size)]
            dist.all_gather(gathered, recorded.to(self.device))
            everything = torch.cat([part.cpu() for part in gathered])
            summary = summary.cpu()
            total = float(summary[0])
            self._stop_agreed = bool(summary[1] > 0)
        for t, terms in everything:
            if torch.isnan(t).all():
                continue
            self.sampler.update(t.long(), terms)
        return total

    def loss(self, model, guide, batch):
        """
        :returns: the negative ELBO estimate summed over the global batch, in
            nats, without gradients. Every rank must call it.
        :rtype: float
        """
        size, shards = self._shards(batch)
        local_loss = torch.zeros((), dtype=torch.float64)
        with torch.no_grad():
            for index, shard in enumerate(shards):
                with self._shard_random_state(index):
                    local_loss += self.module(shard).cpu().double()
                self.updates.pop(size)
        if self.placement.world_size > 1:
            local_loss = local_loss.to(self.device)
            dist.all_reduce(local_loss)
        return float(local_loss)

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("ShardedELBO evaluates shards through TimestepELBO and keeps no traces of its own")

    def gather_rng_states(self):
        """
        :returns: the random states of all ``S`` shards in shard order, on
            every rank. Every rank must call it.
        :rtype: list
        """
        if self.placement.world_size == 1:
            return [dict(state) for state in self.rng_states]
        gathered = [None] * self.placement.world_size
        dist.all_gather_object(gathered, self.rng_states)
        return [state for states in gathered for state in states]

    def load_rng_states(self, states):
        """
        Set this rank's shard states from :meth:`gather_rng_states`'s list.

        :raises ValueError: unless the list has one state per shard.
        """
        if len(states) != self.placement.num_shards:
            raise ValueError(f"expected {self.placement.num_shards} shard random states, got {len(states)}")
        self.rng_states = [dict(states[g]) for g in self.placement.local_shards]
