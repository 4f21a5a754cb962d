"""
The ``pyro-diffusion`` command line: ``train``, ``sample`` and ``evaluate``.

Every number printed states its unit. Errors in the input print one line
and exit with status 2.
"""

import argparse
import dataclasses
import logging
import math
import shutil
import sys
from pathlib import Path

import torch

from .data import swiss_roll_log_prob
from .experiment import (
    Dataset,
    PreparedData,
    RunConfig,
    baseline_bits_per_dim,
    build_model,
    parse_schedule,
    prepare_data,
    save_atomic,
    write_json,
)
from .likelihood import heldout_bound, heldout_importance_log_likelihood, nats_to_bits
from .plots import save_image_comparison, save_scatter_comparison
from .distributed import check_batch_size, placement_from_environment, process_group, run_on_all_ranks, run_on_main
from .fewstep import sample_strided
from .posterior_cli import add_posterior_commands, run_posterior
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
    train.add_argument(
        "--dataset",
        default=None,
        help="digits (default), swiss-roll, heartbeat, dead-leaves, textures, mnist, fashion-mnist, cifar10 "
        "(with --data-root), or array with --data",
    )
    train.add_argument("--data", default=None, help="a .npy or .pt array of your own, examples on the first axis")
    train.add_argument("--out", default=None, help="the run folder (default: runs/DATASET)")
    train.add_argument("--steps", type=int, default=None, help="the number of SVI steps")
    train.add_argument("--timesteps", type=int, default=None, help="the number of diffusion steps T")
    train.add_argument("--batch-size", type=int, default=128, help="examples per SVI step")
    train.add_argument("--learning-rate", type=float, default=2e-3, help="Adam's initial learning rate")
    train.add_argument(
        "--network",
        default=None,
        help="the reverse network: mlp; for images conv (the paper's multi-scale convolutional network) or unet; "
        "default per data set",
    )
    train.add_argument(
        "--hidden-dim", type=int, default=None, help="the network's width: hidden units of the MLP, channels of the conv network"
    )
    train.add_argument("--schedule", default=None, help="the beta schedule: paper, linear, cosine, log-snr, or learned (beta_2..beta_T trained with the model from the paper schedule; learned-KIND starts from KIND, e.g. learned-log-snr)")
    train.add_argument("--beta-1", type=float, default=None, help="the first step's variance for the paper and log-snr schedules")
    train.add_argument("--dropout", type=float, default=None, help="the dropout probability in the MLP's blocks")
    train.add_argument(
        "--ema-decay", type=float, default=0.999, help="the decay of the weights' moving average; 0 turns it off"
    )
    train.add_argument(
        "--kernel",
        default=None,
        help="the reverse kernel: epsilon or paper (Gaussian), binomial (binary data); default per data set",
    )
    train.add_argument(
        "--prediction",
        default=None,
        help="what the binomial kernel's network predicts: x0 (default, the bits of x_0) or flip (the paper's logit perturbation)",
    )
    train.add_argument("--variance", default=None, help="the epsilon kernel's variance: small, large or learned (default learned)")
    train.add_argument(
        "--timestep-sampling", default="importance", help="how training draws t: importance or uniform"
    )
    train.add_argument("--noise", type=float, default=None, help="the Swiss roll's noise standard deviation, in the curve's raw units (default 0.05)")
    train.add_argument(
        "--levels",
        type=int,
        default=None,
        help="treat --data as integer levels 0..K-1 (e.g. 256 for 8-bit images), uniformly dequantized",
    )
    train.add_argument(
        "--image-size", type=int, default=None, help="the side in pixels of the dead-leaves and texture images (default 16)"
    )
    train.add_argument(
        "--data-root",
        default=None,
        help="the folder of torchvision's files for mnist, fashion-mnist and cifar10, e.g. ROOT/MNIST/raw/",
    )
    train.add_argument(
        "--download", action="store_true", help="let torchvision download missing files into --data-root (off by default)"
    )
    train.add_argument("--seed", type=int, default=0, help="the seed of the split, the weights and the training")
    train.add_argument("--resume", action="store_true", help="continue the run in --out up to --steps")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument(
        "--accumulate",
        type=int,
        default=1,
        help="split each process's share of the batch into A shards run one after another, summing their "
        "gradients (default 1); --batch-size must be a multiple of the number of processes times A",
    )
    train.add_argument(
        "--distributed-timeout",
        type=float,
        default=300.0,
        help="under torchrun, the seconds a process waits for its peers at the rendezvous and at each step",
    )
    _add_threads_option(train)

    sample = commands.add_parser("sample", help="draw samples from a trained run")
    sample.add_argument("run_dir", help="a run folder written by 'pyro-diffusion train'")
    sample.add_argument("--num-samples", type=int, default=64, help="the number of samples")
    sample.add_argument("--seed", type=int, default=None, help="the seed of the sampling stream (default: the run's --seed)")
    sample.add_argument("--out", default=None, help="the PNG to write (default: RUN_DIR/samples.png)")
    sample.add_argument(
        "--sampling-steps",
        type=int,
        default=None,
        help="sample with N evenly strided steps of the T (DDIM-style; default: all T steps, ancestral sampling)",
    )
    sample.add_argument(
        "--eta", type=float, default=None, help="the noise of few-step sampling: 0 deterministic, 1 (default) stochastic"
    )
    _add_threads_option(sample)

    evaluate = commands.add_parser("evaluate", help="compute the held-out bound of a trained run")
    evaluate.add_argument("run_dir", help="a run folder written by 'pyro-diffusion train'")
    evaluate.add_argument(
        "--seed", type=int, default=None, help="the seed of the forward samples (default: the run's --seed, as train used)"
    )
    evaluate.add_argument(
        "--importance-samples",
        type=int,
        default=None,
        help="also estimate the log-likelihood with K importance-weighted forward trajectories "
        "per example (costs K times T network evaluations per example)",
    )
    _add_threads_option(evaluate)
    add_posterior_commands(commands, _add_threads_option)
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
        network=args.network,
        variance=args.variance if args.variance is not None else "learned",
        prediction=args.prediction,
        timestep_sampling=args.timestep_sampling,
        noise=args.noise if args.noise is not None else 0.05,
        levels=args.levels,
        image_size=args.image_size,
        data_root=args.data_root,
        download=args.download,
        seed=args.seed,
    )
    config = config.resolved()
    if args.beta_1 is not None and parse_schedule(config.schedule)[0].value not in ("paper", "log-snr"):
        raise UsageError(
            f"--beta-1 applies to the paper and log-snr schedules, learned or fixed, not --schedule {config.schedule}: drop it"
        )
    if args.variance is not None and config.kernel != "epsilon":
        raise UsageError(f"--variance applies to --kernel epsilon, not {config.kernel}: drop it")
    if args.noise is not None and config.dataset != Dataset.SWISS_ROLL.value:
        raise UsageError(f"--noise applies to --dataset swiss-roll, not {config.dataset}: drop it")
    return config


def _first_sentence(error, limit=200):
    """Return the first sentence of an error's message on one line, cut at a word boundary past ``limit`` characters."""
    text = " ".join(str(error).split())
    end = text.find(". ")
    text = text if end < 0 else text[: end + 1]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def _read_checkpoint(path):
    """Load a checkpoint as plain tensors and containers; pickled code is rejected."""
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        RunConfig(**checkpoint["config"])
        checkpoint["trainer"]["model"]
    except Exception as error:  # a truncated, foreign or tampered file
        reason = _first_sentence(error)
        raise UsageError(
            f"{path} is not a readable pyro-diffusion checkpoint ({type(error).__name__}: {reason}); "
            "train again or restore the file"
        ) from error
    return checkpoint


def _load_run(run_dir):
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise UsageError(f"{path} not found: pass a run folder written by 'pyro-diffusion train'")
    checkpoint = _read_checkpoint(path)
    config = RunConfig(**checkpoint["config"])
    heldout_path = run_dir / HELDOUT
    try:
        heldout = torch.load(heldout_path, weights_only=True)
        data = PreparedData.from_state_dict(checkpoint["data"], heldout)
        decoder = data.dequantization.decoder() if data.dequantization else None
        diffusion = build_model(config, heldout.shape[1], decoder, data.example_shape)
        # Sampling and evaluation use the moving-average weights where training kept them.
        ema = checkpoint["trainer"].get("ema")
        diffusion.load_state_dict(ema["shadow"] if ema else checkpoint["trainer"]["model"])
    except Exception as error:
        reason = _first_sentence(error)
        raise UsageError(
            f"{run_dir} is not a complete run folder ({type(error).__name__}: {reason}); "
            "train again with 'pyro-diffusion train'"
        ) from error
    diffusion.eval()
    return checkpoint, config, diffusion, data


def _evaluate(diffusion, config, data, baseline, steps, seed, importance_samples=None):
    heldout, dequantization, log_density = data.heldout, data.dequantization, data.log_density
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
    if importance_samples is not None:
        estimate = heldout_importance_log_likelihood(diffusion, x, importance_samples, generator=generator)
        metrics["importance_samples"] = importance_samples
        metrics["heldout_log_likelihood_bits"] = estimate["log_likelihood_bits"]
        metrics["heldout_log_likelihood_bits_stderr"] = estimate["log_likelihood_bits_stderr"]
        if dequantization is not None:
            metrics["heldout_importance_nll_bits_per_dim"] = dequantization.nll_bits_per_dim(
                estimate["log_likelihood_bits_per_dim"]
            )
    if data.null_log_likelihood_bits is not None:
        metrics["l_null_bits"] = data.null_log_likelihood_bits
        metrics["heldout_k_minus_l_null_bits"] = result["elbo_bits"] - data.null_log_likelihood_bits
        metrics["units"] = (
            "heldout_elbo_* is the trace ELBO (the bound on log-likelihood, higher is better) per binary "
            "example, in bits; l_null_bits is the independent Bernoulli(0.2) model's log-likelihood"
        )
    if data.center is not None:
        metrics["data_scale"] = {
            "scale": data.scale,
            "note": "the model's scale is (data - per-feature training mean) / scale",
        }
    if log_density is not None:
        truth = nats_to_bits(log_density(x))
        metrics["true_log_likelihood_bits"] = float(truth.mean())
        metrics["true_log_likelihood_bits_stderr"] = float(truth.std() / math.sqrt(len(truth)))
    if dequantization is not None:
        metrics["heldout_nll_bits_per_dim"] = dequantization.nll_bits_per_dim(result["elbo_bits_per_dim"])
        metrics["heldout_nll_bits_per_dim_stderr"] = result["elbo_bits_stderr"] / heldout.shape[1]
        metrics["dequantization"] = dequantization.state_dict()
        if baseline is not None:
            metrics["baseline_nll_bits_per_dim"] = baseline
    return metrics


def _report(metrics):
    d = metrics["dimension"]
    print(
        f"held-out bound (trace ELBO): {metrics['heldout_elbo_bits']:.3f} "
        f"+- {metrics['heldout_elbo_bits_stderr']:.3f} (standard error) bits per example, "
        f"{metrics['heldout_elbo_bits_per_dim']:.4f} bits per dimension (D = {d}), higher is better"
    )
    print(f"K - L_null: {metrics['heldout_k_minus_l_null_bits']:.3f} bits per example")
    if "heldout_log_likelihood_bits" in metrics:
        print(
            f"held-out log-likelihood, importance-sampled with K = {metrics['importance_samples']}: "
            f"{metrics['heldout_log_likelihood_bits']:.3f} +- {metrics['heldout_log_likelihood_bits_stderr']:.3f} "
            "(standard error) bits per example"
        )
    if "heldout_importance_nll_bits_per_dim" in metrics:
        print(
            "importance-sampled NLL on the integer scale: "
            f"{metrics['heldout_importance_nll_bits_per_dim']:.4f} bits per dimension (lower is better)"
        )
    if "true_log_likelihood_bits" in metrics:
        print(
            f"exact held-out log-likelihood of the generator: {metrics['true_log_likelihood_bits']:.3f} "
            "bits per example"
        )
    if "heldout_nll_bits_per_dim" in metrics:
        print(
            f"held-out NLL bound on the integer scale: {metrics['heldout_nll_bits_per_dim']:.4f} "
            f"+- {metrics['heldout_nll_bits_per_dim_stderr']:.4f} (standard error) "
            "bits per dimension (uniformly dequantized, lower is better)"
        )
    if "baseline_nll_bits_per_dim" in metrics:
        print(
            "independent per-pixel categorical baseline: "
            f"{metrics['baseline_nll_bits_per_dim']:.4f} bits per dimension"
        )


def _save_samples(diffusion, data, png_path, num_samples, seed, sampling_steps=None, eta=1.0):
    """
    Draw samples and save them in the data's units and shape, with a PNG
    beside held-out data where the data are images or 2-D points.

    :returns: ``(samples, wrote_png)``.
    """
    generator = torch.Generator().manual_seed(seed)
    if sampling_steps is None:
        drawn = diffusion.sample(num_samples, generator=generator)
    else:
        drawn = sample_strided(diffusion, num_samples, sampling_steps, eta=eta, generator=generator)
    samples = data.to_data_units(drawn)
    heldout = data.heldout_in_data_units()
    if data.image_shape is not None:
        levels = data.dequantization.num_levels if data.dequantization else None
        shape = tuple(data.image_shape)
        save_image_comparison(
            samples.reshape((len(samples),) + shape), heldout.reshape((len(heldout),) + shape), png_path, num_levels=levels
        )
        return samples, True
    if samples.dim() == 2 and samples.shape[1] == 2:
        save_scatter_comparison(samples, heldout, png_path)
        return samples, True
    return samples, False


def _check_resume(saved_config, config, saved_step, out):
    differences = [
        f"{field.name} (saved {getattr(saved_config, field.name)!r}, now {getattr(config, field.name)!r}, "
        "from the options or their defaults)"
        for field in dataclasses.fields(RunConfig)
        if field.name != "steps" and getattr(saved_config, field.name) != getattr(config, field.name)
    ]
    if differences:
        raise UsageError(
            f"--resume: options differ from those saved in {out}: {'; '.join(differences)}. "
            "Pass the saved values; only --steps may change"
        )
    if config.steps < saved_step:
        raise UsageError(
            f"--resume: --steps {config.steps} is below the {saved_step} steps already taken; "
            f"pass --steps above {saved_step}"
        )


def _train(args):
    config = _config_from_args(args)
    placement = placement_from_environment(args.accumulate)
    check_batch_size(config.batch_size, placement)
    if placement.world_size == 1:
        return _train_process(args, config, placement)
    if config.download:
        raise UsageError(
            "--download under torchrun: download once in a single process "
            "(pyro-diffusion train --download --steps 0 ...), then launch without --download"
        )
    if not math.isfinite(args.distributed_timeout) or args.distributed_timeout <= 0:
        raise UsageError(f"--distributed-timeout must be a positive number of seconds, got {args.distributed_timeout}")
    if not placement.is_main:
        # Rank 0 logs progress, and the other ranks log only warnings and errors.
        logger.setLevel(logging.WARNING)
    with process_group(placement, args.distributed_timeout):
        try:
            return _train_process(args, config, placement)
        except torch.distributed.DistError as error:
            reason = _first_sentence(error, limit=300)
            raise UsageError(
                f"rank {placement.rank}: a collective call failed because a peer process stopped or timed out "
                f"after --distributed-timeout {args.distributed_timeout:g} s ({type(error).__name__}: {reason}); "
                "see the other ranks' errors for the cause"
            ) from error


def _open_run_folder(args, config, out):
    """Check the run folder for a new or resumed run, and return the saved checkpoint or ``None``."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is an existing file: choose a folder path")
    checkpoint_path = out / CHECKPOINT
    if args.resume:
        if not checkpoint_path.is_file():
            raise UsageError(
                f"--resume: {checkpoint_path} not found, so the run stopped before its first checkpoint or never "
                "started: train without --resume to start it again"
            )
        saved = _read_checkpoint(checkpoint_path)
        _check_resume(RunConfig(**saved["config"]), config, int(saved["trainer"]["step"]), out)
        return saved
    if out.exists():
        names = {path.name for path in out.iterdir()}
        # A run stopped before its first checkpoint leaves only these two
        # files, which hold no training; a new run replaces them.
        if names - {HELDOUT, "config.json"}:
            raise UsageError(f"{out} already contains files: pass --resume to continue it or choose another --out")
        if names:
            logger.info("%s contains no checkpoint: starting the run again and replacing %s", out, sorted(names))
    return None


def _train_process(args, config, placement):
    """
    Train in this process, one of ``placement.world_size``. Rank 0 alone
    reads and writes the run folder and evaluates. The other ranks return 0
    after the last step.
    """
    main = placement.is_main
    out = Path(args.out) if args.out else Path("runs") / config.dataset
    checkpoint_path = out / CHECKPOINT
    saved = run_on_main(lambda: _open_run_folder(args, config, out), placement)
    prepared = run_on_all_ranks(lambda: prepare_data(config), placement)

    # The seed fixes the initial weights as well as the training draws.
    torch.manual_seed(config.seed)
    decoder = prepared.dequantization.decoder() if prepared.dequantization else None
    diffusion = build_model(config, prepared.dim, decoder, prepared.example_shape)
    trainer = Trainer(diffusion, prepared, config, placement)
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
    batch_size = min(config.batch_size, len(prepared.train))
    if placement.num_shards > 1:
        if batch_size % placement.num_shards != 0:
            raise UsageError(
                f"the training split has {len(prepared.train)} examples, so each step's batch is {batch_size}, "
                f"which does not split into {placement.num_shards} equal shards: pass --batch-size "
                f"{batch_size // placement.num_shards * placement.num_shards}"
            )

    created = not out.exists()

    def create_folder():
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot create the run folder {out} ({error.strerror}): choose another --out") from error

    run_on_main(create_folder, placement)

    def checkpoint():
        # Every rank builds the state, because that gathers the shards' random states. Rank 0 writes it.
        state = {"config": dataclasses.asdict(config), "trainer": trainer.state_dict(), "data": prepared.state_dict()}
        if main:
            save_atomic(state, checkpoint_path)

    try:
        if main:
            save_atomic(prepared.heldout, out / HELDOUT)
            write_json(out / "config.json", dataclasses.asdict(config))
        logger.info("training %s for %d steps with T = %d into %s", config.dataset, config.steps, config.timesteps, out)
        if placement.num_shards > 1:
            logger.info(
                "data parallel: %d process(es) times %d accumulated shard(s), %d examples per shard",
                placement.world_size,
                placement.accumulate,
                batch_size // placement.num_shards,
            )
        trainer.fit(progress=main and not args.no_progress, on_checkpoint=checkpoint)
    except KeyboardInterrupt:
        if not trainer.between_steps:
            # A second Ctrl-C stopped a step part way: its state would not resume exactly.
            if main:
                if checkpoint_path.exists():
                    previous = f"{checkpoint_path} from an earlier step is kept"
                else:
                    previous = "no checkpoint was written yet, so train again without --resume"
                print(f"interrupted during step {trainer.step + 1}, so nothing was saved: {previous}", file=sys.stderr)
            return 130
        checkpoint()
        if main:
            print(f"interrupted at step {trainer.step}; saved {checkpoint_path}; continue with --resume", file=sys.stderr)
        return 130
    except BaseException:
        # A run that failed before its first checkpoint leaves nothing behind:
        # neither a folder it created nor files it wrote into an empty one.
        if main and saved is None and not checkpoint_path.exists():
            if created:
                shutil.rmtree(out, ignore_errors=True)
            else:
                for name in (HELDOUT, "config.json"):
                    (out / name).unlink(missing_ok=True)
        raise
    checkpoint()
    if not main:
        return 0

    evaluation_model = trainer.evaluation_model()
    metrics = _evaluate(evaluation_model, config, prepared, baseline_bits_per_dim(prepared), trainer.step, config.seed)
    metrics["train_seconds"] = trainer.seconds
    write_json(out / "metrics.json", metrics)
    # A point cloud needs many more points than an image grid has cells.
    num_shown = 64 if prepared.image_shape is not None else len(prepared.heldout)
    _save_samples(evaluation_model, prepared, out / "samples.png", num_shown, config.seed)
    print(f"run folder: {out}")
    _report(metrics)
    return 0


RUN_FILES = (CHECKPOINT, HELDOUT, "config.json", "metrics.json")


def _sample(args):
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} not found: pass a folder written by 'pyro-diffusion train'")
    png_path = Path(args.out) if args.out else run_dir / "samples.png"
    if png_path.suffix.lower() != ".png":
        raise UsageError(f"--out {png_path} must end in .png (the samples go beside it as a .pt file)")
    tensor_path = png_path.with_suffix(".pt")
    for target in (png_path, tensor_path):
        if target.name in RUN_FILES and target.resolve().parent == run_dir.resolve():
            raise UsageError(f"--out {png_path} would overwrite the run's own {target.name}: choose another name")
    if not png_path.parent.is_dir():
        raise UsageError(f"--out {png_path}: the folder {png_path.parent} does not exist")
    checkpoint, config, diffusion, data = _load_run(run_dir)
    seed = config.seed if args.seed is None else args.seed
    if args.sampling_steps is None and args.eta is not None:
        raise UsageError("--eta applies to few-step sampling: pass --sampling-steps N as well")
    if args.sampling_steps is not None and config.kernel == "binomial":
        raise UsageError("--sampling-steps applies to Gaussian kernels, not to this binomial run: drop it")
    eta = 1.0 if args.eta is None else args.eta
    samples, wrote_png = _save_samples(diffusion, data, png_path, args.num_samples, seed, args.sampling_steps, eta)
    save_atomic(samples, tensor_path)
    shape = "x".join(str(d) for d in samples.shape)
    if wrote_png:
        print(f"wrote {args.num_samples} samples ({shape}, data units) to {tensor_path}; figure: {png_path}")
    else:
        print(f"wrote {args.num_samples} samples ({shape}, data units) to {tensor_path}; no figure for this data shape")
    return 0


def _evaluate_command(args):
    checkpoint, config, diffusion, data = _load_run(args.run_dir)
    if config.dataset == Dataset.SWISS_ROLL.value:
        noise = config.noise
        data.log_density = lambda x: swiss_roll_log_prob(x, noise)
    elif config.dataset == Dataset.HEARTBEAT.value:
        data.log_density = prepare_data(config).log_density
    metrics_path = Path(args.run_dir) / "metrics.json"
    baseline = checkpoint["data"].get("baseline_nll_bits_per_dim")
    if args.importance_samples is not None and args.importance_samples < 1:
        raise UsageError(f"--importance-samples must be >= 1, got {args.importance_samples}")
    seed = config.seed if args.seed is None else args.seed
    metrics = _evaluate(diffusion, config, data, baseline, checkpoint["trainer"]["step"], seed, args.importance_samples)
    metrics["train_seconds"] = checkpoint["trainer"]["seconds"]
    write_json(metrics_path, metrics)
    _report(metrics)
    return 0


def _posterior(args):
    return run_posterior(args, _load_run, UsageError)


def main(argv=None):
    """Run the command line; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.threads < 1:
        print(f"pyro-diffusion {args.command}: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    commands = {
        "train": _train,
        "sample": _sample,
        "evaluate": _evaluate_command,
        "inpaint": _posterior,
        "denoise": _posterior,
    }
    try:
        return commands[args.command](args)
    except (UsageError, ValueError, OSError) as error:
        message = " ".join(str(error).split())
        print(f"pyro-diffusion {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
