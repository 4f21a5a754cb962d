"""
pyro_diffusion: diffusion probabilistic models (Sohl-Dickstein et al., 2015)
as Pyro model/guide pairs.
"""

from .binomial import BernoulliReverse, BinomialForward, binomial_betas
from .decoders import BinnedDecoder, GaussianDecoder
from .dequantize import UniformDequantization
from .distributions import BinnedNormal
from .conditioning import Observation, condition, product_sample, smc_sample
from .elbo import TimestepELBO
from .fewstep import sample_strided
from .forward import GaussianForward
from .likelihood import (
    NULL_BITS_PER_DIM,
    BoundTerms,
    bound_terms,
    heldout_bound,
    heldout_importance_log_likelihood,
    importance_log_likelihood,
)
from .model import DiffusionModel
from .nets import MLP, MultiScaleConvNet, UNet
from .optim import JointOptim, joint_adam, joint_clipped_adam
from .reverse import EpsilonReverse, PaperReverse, ReverseKernel, ReverseVariance
from .schedules import BetaSchedule, LearnedBetaSchedule, ScheduleKind, cosine_betas, linear_betas, make_betas, paper_betas
from .timesteps import ImportanceTimesteps, UniformTimesteps, subsample_timesteps

__version__ = "0.1.0"

__all__ = [
    "BernoulliReverse",
    "BetaSchedule",
    "BinomialForward",
    "BinnedDecoder",
    "BinnedNormal",
    "BoundTerms",
    "DiffusionModel",
    "EpsilonReverse",
    "GaussianDecoder",
    "GaussianForward",
    "ImportanceTimesteps",
    "JointOptim",
    "LearnedBetaSchedule",
    "MLP",
    "MultiScaleConvNet",
    "NULL_BITS_PER_DIM",
    "Observation",
    "PaperReverse",
    "ReverseKernel",
    "ReverseVariance",
    "ScheduleKind",
    "TimestepELBO",
    "UNet",
    "UniformDequantization",
    "UniformTimesteps",
    "binomial_betas",
    "bound_terms",
    "condition",
    "cosine_betas",
    "heldout_bound",
    "heldout_importance_log_likelihood",
    "importance_log_likelihood",
    "joint_adam",
    "joint_clipped_adam",
    "linear_betas",
    "make_betas",
    "paper_betas",
    "product_sample",
    "sample_strided",
    "smc_sample",
    "subsample_timesteps",
]
