"""``synthgen run``, ``verify`` and ``show``: each builds a config and calls one library function."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from synthgen.cli.common import GUIDANCE_HELP, SAMPLER_HELP, STEPS_HELP, app, fail, user_errors
from synthgen.errors import exit_status


@app.command()
def run(
    count: Annotated[int, typer.Option("--count", "-n", help="Images to generate.")],
    out: Annotated[str, typer.Option(help="Dataset directory or URI (s3://bucket/prefix, ...).")] = "synthetic",
    model: Annotated[Optional[str], typer.Option(help="Checkpoint directory, URI or bundled model name; "
                                                      "default: the bundled breastmnist-dcgan.")] = None,
    format: Annotated[str, typer.Option("--format", help="parquet (HF image column), png (ImageFolder tree), "
                                        "dicom (one Secondary Capture file per image) or nifti (one 2D .nii.gz "
                                        "per image).")] = "parquet",
    encoding: Annotated[str, typer.Option(help="png (HF Image column) or raw (uint8 tensors, Parquet only).")
                        ] = "png",
    spacing: Annotated[Optional[str], typer.Option(help="--format nifti: pixel spacing in mm, 0.5 or ROWxCOL "
                                                        "(default: the training data's, when it had one).")
                       ] = None,
    shard_size: Annotated[int, typer.Option(help="Images per shard (unit of work, file and resume).")] = 10_000,
    seed: Annotated[int, typer.Option(help="Base seed; image i depends only on (model, seed, i, labels).")] = 0,
    labels: Annotated[Optional[str], typer.Option(
        help="Label plan: balanced (default), one class (malignant or 0), or weights (malignant=0.7,normal=0.3)."
    )] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Images per forward pass; does not change the output (default: 256 on CPU, 2048 on a GPU, "
             "fewer above 28x28).")] = None,
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast); part of the dataset identity."
                                           )] = "fp32",
    sampler: Annotated[Optional[str], typer.Option(help=SAMPLER_HELP)] = None,
    steps: Annotated[Optional[int], typer.Option(help=STEPS_HELP)] = None,
    guidance: Annotated[Optional[float], typer.Option(help=GUIDANCE_HELP)] = None,
    gpus: Annotated[Optional[int], typer.Option(help="GPUs to use, one actor each (default: all the cluster "
                                                     "has; 0 = CPU actors).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="CPU actors when running without GPUs, "
                                                        "each using its share of the CPUs, at most one per CPU "
                                                        "(default: one per node, or one per 8 CPUs).")] = None,
    actors_per_gpu: Annotated[int, typer.Option(help="Actors sharing each GPU.")] = 1,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster: http(s)://HEAD:8265 submits a Ray job "
                                                        "(see `synthgen jobs`); host:port or ray://... joins it "
                                                        "from here; local: a new local cluster; default: "
                                                        "RAY_ADDRESS, else the `ray start` cluster here if it "
                                                        "answers, else a new local one.")
                       ] = None,
    detach: Annotated[bool, typer.Option(help="With an http(s):// address: print the job id and return at once "
                                              "instead of following the job.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a dataset of other settings at --out.")] = False,
    allow_custom_arch: Annotated[bool, typer.Option(help="Allow importing a checkpoint's package.module:factory "
                                                         "architecture (runs its code).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Generate COUNT images into a Parquet, PNG, DICOM or NIfTI dataset; re-running the same command resumes it."""
    from synthgen.generate.config import RunConfig
    from synthgen.generate.engine import run as run_job

    config = RunConfig(count=count, out=out, model=model, format=format, encoding=encoding, spacing=spacing,
                       shard_size=shard_size, seed=seed, labels=labels, batch_size=batch_size,
                       precision=precision, sampler=sampler, steps=steps, guidance=guidance,
                       gpus=gpus, workers=workers,
                       actors_per_gpu=actors_per_gpu, address=address, overwrite=overwrite,
                       allow_import=allow_custom_arch, progress=progress)
    from synthgen.cluster.client import job_server, submit_run

    if job_server(address):
        with user_errors():
            code = submit_run(config, detach=detach)
        raise typer.Exit(code)
    if detach:
        fail("--detach needs a job server: --address http://HEAD:8265 (or RAY_ADDRESS set to one)")
    with user_errors():
        try:
            summary = run_job(config)
        except KeyboardInterrupt as stop:
            typer.echo(f"interrupted; committed shards are kept in {out}: run the same command again to resume",
                       err=True)
            raise typer.Exit(exit_status(stop)) from None
    typer.echo(summary.report())


@app.command()
def verify(
    path: Annotated[str, typer.Argument(help="Dataset directory or URI.")],
) -> None:
    """Check a dataset against its manifest: files, sizes, sha256, row counts, every index exactly once."""
    from synthgen.dataset.verify import verify_dataset
    from synthgen.storage import human_bytes

    with user_errors():
        report = verify_dataset(path)
    counts = ", ".join(f"{k}={v}" for k, v in report.class_counts.items())
    typer.echo(f"{path}: {report.rows} rows in {report.shards} shards, {human_bytes(report.bytes)}"
               + (f" ({counts})" if counts else ""))
    for stray in report.strays:
        typer.echo(f"stray: {stray} (not part of the dataset)", err=True)
    if report.strays:
        typer.echo("note: synthgen's .tmp-* files are removed by the next run of the same command; the other "
                   "strays are not synthgen's: move them out of the dataset", err=True)
    if not report.ok:
        for problem in report.problems:
            typer.echo(f"problem: {problem}", err=True)
        fail(f"{len(report.problems)} problem(s) in {path}")
    typer.echo("ok: every shard matches the manifest")


@app.command()
def show(
    path: Annotated[str, typer.Argument(help="Dataset directory or URI.")],
    index: Annotated[int, typer.Option(help="Index of the image to regenerate.")],
    out: Annotated[Optional[str], typer.Option(help="Write the regenerated image to this PNG.")] = None,
    model: Annotated[Optional[str], typer.Option(help="The dataset's model, if it moved.")] = None,
) -> None:
    """Regenerate image INDEX from the manifest alone and say whether it matches the stored bytes."""
    from synthgen.generate.show import regenerate
    from synthgen.imaging import save_png

    with user_errors():
        result = regenerate(path, index, model)
    label = f"label {result.label} ({result.class_name})" if result.label >= 0 else "unconditional"
    verdict = (f"identical {result.file_kind} bytes" if result.same_bytes else
               "identical pixels" if result.same_pixels and result.same_bytes is None else
               f"same pixels, different {result.file_kind} bytes (another encoder build?)" if result.same_pixels else
               "DIFFERENT pixels")
    typer.echo(f"index {result.index}: seed {result.seed}, {label}: regenerated image vs stored: {verdict}")
    if result.not_exact:
        typer.echo(f"note: not a byte-exact comparison: {result.not_exact}", err=True)
    if out:
        save_png(out, result.image)
        typer.echo(f"wrote {out}")
    if not result.same_pixels and not result.not_exact:
        raise typer.Exit(1)
