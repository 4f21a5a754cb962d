"""
The ``pyro-diffusion`` command line: ``train``, ``sample`` and ``evaluate``.

Every number printed states its unit. Errors in the input print one line
and exit with status 2.
"""

import argparse
import dataclasses
import json
import logging
import math
import shutil
import sys
from pathlib import Path

import torch

from .dequantize import UniformDequantization
from .experiment import (
    Dataset,
    RunConfig,
    baseline_bits_per_dim,
    build_model,
    prepare_data,
    save_atomic,
    write_json,
)
from .likelihood import heldout_bound, nats_to_bits
from .plots import save_image_comparison, save_scatter_comparison
from .train import Trainer

logger = logging.getLogger("pyro_diffusion")

CHECKPOINT = "checkpoint.pt"
HELDOUT = "heldout.pt"


class UsageError(Exception):
    """A command-line input that cannot be used; printed as one line, exit status 2."""


def _parser():
    parser = argparse.ArgumentParser(
        prog="pyro-diffusion",
        description="Diffusion probabilistic models (Sohl-Dickstein et al., 2015) on Pyro.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model and write a run folder")
    train.add_argument("--dataset", default=None, help="digits (default), swiss-roll, or array with --data")
    train.add_argument("--data", default=None, help="a .npy or .pt array of your own, examples on the first axis")
    train.add_argument("--out", default=None, help="the run folder (default: runs/DATASET)")
    train.add_argument("--steps", type=int, default=None, help="the number of SVI steps")
    train.add_argument("--timesteps", type=int, default=None, help="the number of diffusion steps T")
    train.add_argument("--batch-size", type=int, default=128, help="examples per SVI step")
    train.add_argument("--learning-rate", type=float, default=2e-3, help="Adam's initial learning rate")
    train.add_argument("--hidden-dim", type=int, default=None, help="the width of the MLP")
    train.add_argument("--schedule", default=None, help="the beta schedule: paper, linear, cosine or log-snr")
    train.add_argument("--beta-1", type=float, default=None, help="the first step's variance for the paper and log-snr schedules")
    train.add_argument("--dropout", type=float, default=None, help="the dropout probability in the MLP's blocks")
    train.add_argument(
        "--ema-decay", type=float, default=0.999, help="the decay of the weights' moving average; 0 turns it off"
    )
    train.add_argument("--kernel", default="epsilon", help="the reverse kernel: epsilon or paper")
    train.add_argument("--variance", default="learned", help="the epsilon kernel's variance: small, large or learned")
    train.add_argument(
        "--timestep-sampling", default="importance", help="how training draws t: importance or uniform"
    )
    train.add_argument("--noise", type=float, default=0.05, help="the Swiss roll's noise, in the curve's raw units")
    train.add_argument("--seed", type=int, default=0, help="the seed of the split, the weights and the training")
    train.add_argument("--resume", action="store_true", help="continue the run in --out up to --steps")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_threads_option(train)

    sample = commands.add_parser("sample", help="draw samples from a trained run")
    sample.add_argument("run_dir", help="a run folder written by 'pyro-diffusion train'")
    sample.add_argument("--num-samples", type=int, default=64, help="the number of samples")
    sample.add_argument("--seed", type=int, default=0, help="the seed of the sampling stream")
    sample.add_argument("--out", default=None, help="the PNG to write (default: RUN_DIR/samples.png)")
    _add_threads_option(sample)

    evaluate = commands.add_parser("evaluate", help="compute the held-out bound of a trained run")
    evaluate.add_argument("run_dir", help="a run folder written by 'pyro-diffusion train'")
    evaluate.add_argument("--seed", type=int, default=0, help="the seed of the forward samples")
    _add_threads_option(evaluate)
    return parser


def _add_threads_option(parser):
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for PyTorch (default 1: the default networks are too small to gain from more)",
    )


def _config_from_args(args):
    dataset = args.dataset
    if dataset is None:
        dataset = "array" if args.data else "digits"
    elif args.data and dataset != "array":
        raise UsageError(f"--data is for your own array; drop --dataset {dataset} or use --dataset array")
    config = RunConfig(
        dataset=dataset,
        data=args.data,
        timesteps=args.timesteps,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        hidden_dim=args.hidden_dim,
        dropout=args.dropout,
        ema_decay=args.ema_decay,
        schedule=args.schedule,
        beta_1=args.beta_1,
        kernel=args.kernel,
        variance=args.variance,
        timestep_sampling=args.timestep_sampling,
        noise=args.noise,
        seed=args.seed,
    )
    return config.resolved()


def _load_run(run_dir):
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise UsageError(f"{path} not found: pass a run folder written by 'pyro-diffusion train'")
    try:
        checkpoint = torch.load(path, weights_only=False, map_location="cpu")
        config = RunConfig(**checkpoint["config"])
    except Exception as error:  # a truncated or foreign file
        raise UsageError(f"{path} is not a readable pyro-diffusion checkpoint ({error})") from error
    dequantization = None
    if checkpoint.get("dequantization"):
        dequantization = UniformDequantization.from_state_dict(checkpoint["dequantization"])
    heldout = torch.load(run_dir / HELDOUT, weights_only=True)
    decoder = dequantization.decoder() if dequantization else None
    diffusion = build_model(config, heldout.shape[1], decoder)
    # Sampling and evaluation use the moving-average weights where training kept them.
    ema = checkpoint["trainer"].get("ema")
    diffusion.load_state_dict(ema["shadow"] if ema else checkpoint["trainer"]["model"])
    diffusion.eval()
    return checkpoint, config, diffusion, dequantization, heldout


def _evaluate(diffusion, config, heldout, dequantization, image_shape, log_density, baseline, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    x = dequantization(heldout, generator) if dequantization else heldout
    result = heldout_bound(diffusion, x, generator=generator)
    metrics = {
        "dataset": config.dataset,
        "timesteps": config.timesteps,
        "steps": steps,
        "heldout_examples": len(heldout),
        "dimension": heldout.shape[1],
        "heldout_elbo_bits": result["elbo_bits"],
        "heldout_elbo_bits_stderr": result["elbo_bits_stderr"],
        "heldout_elbo_bits_per_dim": result["elbo_bits_per_dim"],
        "heldout_k_minus_l_null_bits": result["k_minus_l_null_bits"],
        "heldout_prior_term_bits": result["prior_bits"],
        "heldout_diffusion_terms_bits": result["diffusion_bits"],
        "heldout_decoder_term_bits": result["decoder_bits"],
        "units": (
            "heldout_elbo_* is the trace ELBO (the bound on log-likelihood, higher is better) "
            "per example on the model's scale (data divided by one constant to variance 1), in bits"
        ),
    }
    if log_density is not None:
        truth = nats_to_bits(log_density(x))
        metrics["true_log_likelihood_bits"] = float(truth.mean())
        metrics["true_log_likelihood_bits_stderr"] = float(truth.std() / math.sqrt(len(truth)))
    if dequantization is not None:
        metrics["heldout_nll_bits_per_dim"] = dequantization.nll_bits_per_dim(result["elbo_bits_per_dim"])
        metrics["dequantization"] = dequantization.state_dict()
        if baseline is not None:
            metrics["baseline_nll_bits_per_dim"] = baseline
    return metrics


def _report(metrics):
    d = metrics["dimension"]
    print(
        f"held-out bound (trace ELBO): {metrics['heldout_elbo_bits']:.3f} "
        f"+- {metrics['heldout_elbo_bits_stderr']:.3f} bits per example, "
        f"{metrics['heldout_elbo_bits_per_dim']:.4f} bits per dimension (D = {d}), higher is better"
    )
    print(f"K - L_null: {metrics['heldout_k_minus_l_null_bits']:.3f} bits per example")
    if "true_log_likelihood_bits" in metrics:
        print(
            f"exact held-out log-likelihood of the generator: {metrics['true_log_likelihood_bits']:.3f} "
            "bits per example"
        )
    if "heldout_nll_bits_per_dim" in metrics:
        print(
            f"held-out NLL bound on the integer scale: {metrics['heldout_nll_bits_per_dim']:.4f} "
            "bits per dimension (uniformly dequantized, lower is better)"
        )
    if "baseline_nll_bits_per_dim" in metrics:
        print(
            "independent per-pixel categorical baseline: "
            f"{metrics['baseline_nll_bits_per_dim']:.4f} bits per dimension"
        )


def _save_samples_png(diffusion, heldout, dequantization, image_shape, path, num_samples, seed):
    generator = torch.Generator().manual_seed(seed)
    samples = diffusion.sample(num_samples, generator=generator)
    if dequantization is not None:
        samples = dequantization.to_levels(samples)
    if image_shape is not None:
        levels = dequantization.num_levels if dequantization else None
        save_image_comparison(
            samples.reshape((-1,) + tuple(image_shape)),
            heldout[:num_samples].reshape((-1,) + tuple(image_shape)),
            path,
            num_levels=levels,
        )
    elif samples.shape[1] == 2:
        save_scatter_comparison(samples, heldout, path)
    return samples


def _train(args):
    config = _config_from_args(args)
    prepared = prepare_data(config)
    out = Path(args.out) if args.out else Path("runs") / config.dataset
    checkpoint_path = out / CHECKPOINT
    if args.resume:
        if not checkpoint_path.is_file():
            raise UsageError(f"--resume: {checkpoint_path} not found; train without --resume first")
    elif out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} already contains files: pass --resume to continue it or choose another --out")

    decoder = prepared.dequantization.decoder() if prepared.dequantization else None
    diffusion = build_model(config, prepared.dim, decoder)
    trainer = Trainer(diffusion, prepared, config)
    if args.resume:
        saved = torch.load(checkpoint_path, weights_only=False, map_location="cpu")
        saved_config = RunConfig(**saved["config"])
        if dataclasses.replace(saved_config, steps=config.steps) != config:
            raise UsageError(
                f"--resume: the options differ from those saved in {out}; only --steps may change"
            )
        trainer.load_state_dict(saved["trainer"])

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)

    def checkpoint():
        save_atomic(
            {
                "config": dataclasses.asdict(config),
                "trainer": trainer.state_dict(),
                "dequantization": prepared.dequantization.state_dict() if prepared.dequantization else None,
                "image_shape": prepared.image_shape,
            },
            checkpoint_path,
        )

    try:
        save_atomic(prepared.heldout, out / HELDOUT)
        write_json(out / "config.json", dataclasses.asdict(config))
        logger.info("training %s for %d steps with T = %d into %s", config.dataset, config.steps, config.timesteps, out)
        trainer.fit(progress=not args.no_progress, on_checkpoint=checkpoint)
    except KeyboardInterrupt:
        checkpoint()
        print(f"interrupted at step {trainer.step}; saved {checkpoint_path}; continue with --resume", file=sys.stderr)
        return 130
    except BaseException:
        if created and not checkpoint_path.exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    checkpoint()

    evaluation_model = trainer.evaluation_model()
    metrics = _evaluate(
        evaluation_model,
        config,
        prepared.heldout,
        prepared.dequantization,
        prepared.image_shape,
        prepared.log_density,
        baseline_bits_per_dim(prepared),
        trainer.step,
        config.seed,
    )
    metrics["train_seconds"] = trainer.seconds
    write_json(out / "metrics.json", metrics)
    # A point cloud needs many more points than an image grid has cells.
    num_shown = 64 if prepared.image_shape is not None else len(prepared.heldout)
    _save_samples_png(
        evaluation_model,
        prepared.heldout,
        prepared.dequantization,
        prepared.image_shape,
        out / "samples.png",
        num_shown,
        config.seed,
    )
    print(f"run folder: {out}")
    _report(metrics)
    return 0


def _sample(args):
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    checkpoint, config, diffusion, dequantization, heldout = _load_run(args.run_dir)
    out = Path(args.out) if args.out else Path(args.run_dir) / "samples.png"
    samples = _save_samples_png(
        diffusion, heldout, dequantization, checkpoint.get("image_shape"), out, args.num_samples, args.seed
    )
    save_atomic(samples, out.with_suffix(".pt"))
    print(f"wrote {args.num_samples} samples to {out.with_suffix('.pt')} and {out}")
    return 0


def _evaluate_command(args):
    checkpoint, config, diffusion, dequantization, heldout = _load_run(args.run_dir)
    log_density = None
    if config.dataset == Dataset.SWISS_ROLL.value:
        from .data import swiss_roll_log_prob

        log_density = lambda x: swiss_roll_log_prob(x, config.noise)  # noqa: E731
    baseline = None
    metrics_path = Path(args.run_dir) / "metrics.json"
    previous = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    baseline = previous.get("baseline_nll_bits_per_dim")
    metrics = _evaluate(
        diffusion, config, heldout, dequantization, checkpoint.get("image_shape"), log_density, baseline,
        checkpoint["trainer"]["step"], args.seed,
    )
    metrics["train_seconds"] = checkpoint["trainer"]["seconds"]
    write_json(metrics_path, metrics)
    _report(metrics)
    return 0


def main(argv=None):
    """Run the command line; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.threads < 1:
        print(f"pyro-diffusion {args.command}: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    commands = {"train": _train, "sample": _sample, "evaluate": _evaluate_command}
    try:
        return commands[args.command](args)
    except (UsageError, ValueError) as error:
        print(f"pyro-diffusion {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
