"""Datasets with known densities or fixed splits, and loaders for user arrays."""

from pyro_diffusion.data.arrays import load_array, validate_data
from pyro_diffusion.data.digits import NUM_DIGIT_LEVELS, load_digits_split
from pyro_diffusion.data.heartbeat import HEARTBEAT_LOG_LIKELIHOOD_BITS, sample_heartbeat
from pyro_diffusion.data.swiss_roll import sample_swiss_roll, swiss_roll_log_prob, swiss_roll_scale

__all__ = [
    "HEARTBEAT_LOG_LIKELIHOOD_BITS",
    "NUM_DIGIT_LEVELS",
    "load_array",
    "load_digits_split",
    "sample_heartbeat",
    "sample_swiss_roll",
    "swiss_roll_log_prob",
    "swiss_roll_scale",
    "validate_data",
]
