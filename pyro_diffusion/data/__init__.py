"""Datasets with known densities or fixed splits, and loaders for user arrays."""

from pyro_diffusion.data.arrays import load_array, validate_data
from pyro_diffusion.data.dead_leaves import render_disks, sample_dead_leaves, sample_leaf_radii
from pyro_diffusion.data.digits import NUM_DIGIT_LEVELS, load_digits_split
from pyro_diffusion.data.heartbeat import HEARTBEAT_LOG_LIKELIHOOD_BITS, sample_heartbeat
from pyro_diffusion.data.swiss_roll import sample_swiss_roll, swiss_roll_log_prob, swiss_roll_scale
from pyro_diffusion.data.torchvision_data import IDX_FILES, load_torchvision_split, write_idx_folder
from pyro_diffusion.data.textures import (
    TEXTURE_NAMES,
    TEXTURE_SPLITS,
    crop_texture_patches,
    load_texture,
    sample_texture_patches,
    texture_split_rows,
)

__all__ = [
    "IDX_FILES",
    "load_torchvision_split",
    "write_idx_folder",
    "HEARTBEAT_LOG_LIKELIHOOD_BITS",
    "NUM_DIGIT_LEVELS",
    "TEXTURE_NAMES",
    "TEXTURE_SPLITS",
    "crop_texture_patches",
    "load_array",
    "load_digits_split",
    "load_texture",
    "render_disks",
    "sample_dead_leaves",
    "sample_heartbeat",
    "sample_leaf_radii",
    "sample_swiss_roll",
    "sample_texture_patches",
    "swiss_roll_log_prob",
    "swiss_roll_scale",
    "texture_split_rows",
    "validate_data",
]
