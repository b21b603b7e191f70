"""synthgen train, sample and models: flags in, one library call out."""

from __future__ import annotations

import os
import signal
from typing import Annotated, Optional

import numpy as np
import typer

from synthgen.cli.common import GUIDANCE_HELP, SAMPLER_HELP, STEPS_HELP, app, fail, user_errors
from synthgen.errors import exit_status, restore_handlers, stop_on_signals

DEVICE_HELP = "auto (cuda when available), cpu, cuda or cuda:N."


@app.command()
def train(
    data: Annotated[str, typer.Option("--data", help="Training images: a MedMNIST-style .npz, a .parquet file "
                                      "or folder of them, a folder with one subfolder of PNG/JPEG, DICOM or "
                                      "NIfTI files per class, or one NIfTI file (a 3D volume: its slices).")],
    out: Annotated[str, typer.Option("--out", help="Checkpoint directory to write (path or URI).")],
    arch: Annotated[str, typer.Option("--arch", help="Generator family: dcgan, vae or diffusion (a class-"
                                      "conditional UNet, v-prediction, EMA weights).")] = "dcgan",
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Total epochs, with --resume the new total "
                                                  "(default: dcgan enough for 20,000 optimiser steps, at most "
                                                  "1,000 epochs; diffusion 20,000 steps, at most 2,000 epochs; "
                                                  "vae 50).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per optimisation step "
                                                      "(default: dcgan 16, diffusion 32, vae 64; with --resume: as "
                                                      "saved).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Adam learning rate "
                                                "(default: dcgan and diffusion 2e-4, vae 1e-3; with --resume: "
                                                "as saved).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for init, shuffling and noise.")] = 0,
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "auto",
    image_size: Annotated[Optional[str], typer.Option("--image-size", help="Train at H[xW] pixels, resized "
                                                      "bilinearly with antialiasing (e.g. 128 or 256x192; sides "
                                                      "s*2**n, s in 3..8, at most 512) (default: the data's "
                                                      "size).")] = None,
    latent_dim: Annotated[Optional[int], typer.Option("--latent-dim", help="Noise size "
                                                      "(default: dcgan 100, vae 32).")] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Generator's first feature-map channels "
                                                 "(default: 128, diffusion 64); sets the model's size.")
                                  ] = None,
    class_names: Annotated[Optional[str], typer.Option("--class-names", help="Comma-separated names for "
                                                       "labels 0, 1, ... (e.g. malignant,normal).")] = None,
    conditional: Annotated[Optional[bool], typer.Option("--conditional/--unconditional", help="Condition on "
                                                        "the labels (default: yes for >1 class).")] = None,
    split: Annotated[str, typer.Option("--split", help="Which split of an .npz to read.")] = "train",
    data_license: Annotated[Optional[str], typer.Option("--data-license", help="The training data's license "
                                                        "(e.g. CC-BY-4.0), stored in the checkpoint and stated "
                                                        "on every dataset card (default: unknown).")] = None,
    data_citation: Annotated[Optional[str], typer.Option("--data-citation", help="How to cite the training "
                                                         "data; stored and stated the same way.")] = None,
    real_share: Annotated[Optional[float], typer.Option("--real-share", help="Train on only this share (0-1] of "
                                                        "the training split: exactly the images that synthgen "
                                                        "eval --real-fractions gives its classifiers at that "
                                                        "share, for a fair low-data comparison.")] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help="Save a checkpoint every N epochs "
                                                      "(default: after the first epoch that ends a minute or "
                                                      "more after the last save); the last epoch is always "
                                                      "saved.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run saved in --out.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a checkpoint already in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train a generator, saving a checkpoint (plus samples/epoch-NNN.png) as it goes and after the last epoch."""
    from synthgen.train import TrainConfig
    from synthgen.train import train as run_training

    names = [n.strip() for n in class_names.split(",")] if class_names is not None else None
    size = _image_size(image_size) if image_size is not None else None
    config = TrainConfig(data=data, out=out, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         device=device, image_size=size, latent_dim=latent_dim, width=width,
                         class_names=names, conditional=conditional, resume=resume, overwrite=overwrite,
                         split=split, data_license=data_license, data_citation=data_citation,
                         real_share=real_share, save_every=save_every)
    previous = stop_on_signals((signal.SIGINT, signal.SIGTERM))  # held while an epoch is being saved
    try:
        with user_errors():
            result = run_training(config, progress=not quiet)
    except KeyboardInterrupt as stop:
        typer.echo(f"interrupted; {out} keeps the last saved epoch, if one was saved: run the same command "
                   "with --resume to continue", err=True)
        raise typer.Exit(exit_status(stop)) from None
    finally:
        restore_handlers(previous)
    final = ", ".join(f"{k} {v:.4g}" for k, v in result.losses[-1].items()) if result.losses else "none"
    epochs = f"{len(result.losses)} epoch{'s' if len(result.losses) != 1 else ''}"
    typer.echo(f"saved {result.out} (fingerprint {result.fingerprint[:12]}, {epochs}, "
               f"{result.seconds:.1f}s this run); last epoch: {final}")


@app.command()
def sample(
    out: Annotated[str, typer.Option("--out", help="PNG file to write the grid to.")],
    model: Annotated[Optional[str], typer.Option("--model", help="Checkpoint directory, URI or bundled "
                                                 "model name (default: the bundled default model).")] = None,
    count: Annotated[int, typer.Option("--count", help="Images (per class when a conditional model gets "
                                       "no --label).")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Base seed; image k's noise comes from "
                                      "the same per-image seed as in synthgen run.")] = 0,
    label: Annotated[Optional[str], typer.Option("--label", help="Class name or index (default: every "
                                                 "class, one block of rows each).")] = None,
    columns: Annotated[int, typer.Option("--columns", help="Images per grid row.")] = 8,
    scale: Annotated[int, typer.Option("--scale", help="Nearest-neighbour upscaling of the PNG.")] = 3,
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "auto",
    sampler: Annotated[Optional[str], typer.Option("--sampler", help=SAMPLER_HELP)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help=STEPS_HELP)] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help=GUIDANCE_HELP)] = None,
    allow_custom_arch: Annotated[bool, typer.Option("--allow-custom-arch", help="Allow a checkpoint whose "
                                                    "architecture is an import path (runs its code).")] = False,
) -> None:
    """Draw a grid of samples from a model into one PNG."""
    from synthgen.checkpoint import load_checkpoint
    from synthgen.generate import diffusion_settings
    from synthgen.generate.device import resolve_device
    from synthgen.generate.plan import check_seed, image_seeds
    from synthgen.generate.sampling import NonFiniteOutput, generate
    from synthgen.imaging import image_grid, save_png

    for flag, value in (("--count", count), ("--columns", columns), ("--scale", scale)):
        if value < 1:
            fail(f"{flag} must be at least 1, got {value}")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        fail(f"--out {out}: directory {parent} does not exist")
    try:
        torch_device = resolve_device(device)
    except ValueError as err:
        fail(f"--device {err}")
    with user_errors():
        check_seed(seed)
        ckpt = load_checkpoint(model, device=str(torch_device), allow_import=allow_custom_arch)
        settings = diffusion_settings.for_checkpoint(ckpt.config, sampler, steps, guidance, ckpt.source)
        generator = diffusion_settings.with_sampler(ckpt.model, settings)
        classes = _label_rows(label, ckpt.config.class_names)
        seeds = np.tile(image_seeds(seed, np.arange(count)), max(len(classes), 1))
        labels = np.repeat(np.asarray(classes, dtype=np.int64), count) if classes else None
        try:
            images = generate(generator, seeds, labels, bit_depth=ckpt.config.bit_depth)  # (N, H, W, C)
        except NonFiniteOutput as err:
            fail(f"{ckpt.source}: {err}")
        # each class starts a new row, so the blocks line up and column k shares its seed across classes
        ncol = min(columns, count)
        save_png(out, image_grid(_pad_rows(images, count, ncol), ncol), scale=scale)
    names = ", ".join(ckpt.config.class_names[c] for c in classes) if classes else "unconditional"
    typer.echo(f"wrote {out}: {len(images)} images from {ckpt.source} ({names}; fingerprint "
               f"{ckpt.fingerprint[:12]})")


@app.command()
def models() -> None:
    """List the models bundled with synthgen (usable as --model NAME)."""
    from synthgen.checkpoint import DEFAULT_MODEL, bundled_models, inspect_checkpoint

    with user_errors():
        names = bundled_models()
        if not names:
            fail("no bundled models in this installation")
        rows = [("name", "arch", "classes", "shape (C,H,W)", "latent", "fingerprint")]
        for name in names:
            cfg, fingerprint = inspect_checkpoint(name)  # no torch: listing stays instant
            rows.append((name + (" (default)" if name == DEFAULT_MODEL else ""), cfg.arch,
                         ",".join(cfg.class_names) or "-", "x".join(map(str, cfg.image_shape)),
                         str(cfg.latent_dim), fingerprint[:12]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _image_size(text: str) -> tuple[int, int]:
    """--image-size "128" or "256x192" (H x W) -> (H, W); anything else fails naming the flag."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        fail(f"--image-size must be H or HxW in pixels (e.g. 128 or 256x192), got {text!r}")
    height, width = int(parts[0]), int(parts[-1])
    return height, width


def _label_rows(label: str | None, class_names: list[str]) -> list[int]:
    """Class indices to draw: the one --label names, or all classes (none for an unconditional model)."""
    if label is None:
        return list(range(len(class_names)))
    if not class_names:
        fail(f"--label {label}: this model is unconditional (it has no classes); drop --label")
    if label in class_names:
        return [class_names.index(label)]
    if label.lstrip("-").isdigit() and 0 <= int(label) < len(class_names):
        return [int(label)]
    fail(f"--label {label!r} is not a class of this model; use one of {', '.join(class_names)} "
         f"or an index 0-{len(class_names) - 1}")
    return []  # unreachable: fail() exits


def _pad_rows(images: np.ndarray, per_block: int, ncol: int) -> np.ndarray:
    """Insert blank (white) tiles so every block of ``per_block`` images starts on a fresh grid row."""
    if per_block % ncol == 0 or len(images) == per_block:
        return images
    blank = np.full((ncol - per_block % ncol,) + images.shape[1:], np.iinfo(images.dtype).max, dtype=images.dtype)
    blocks = [images[i:i + per_block] for i in range(0, len(images), per_block)]
    return np.concatenate([part for block in blocks for part in (block, blank)][:-1])
