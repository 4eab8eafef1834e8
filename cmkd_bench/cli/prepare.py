"""`cmkd-bench prepare DATASET --src RAW --dst ROOT`: a raw release into its loader's layout (cmkd_bench.data.prepare)."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.console import Console

from ..artefacts.files import check_writable_dir
from ..catalog import DATASETS, load_all
from ..data.checksums import write_checksums
from ..data.prepare import print_report
from ..errors import UserError


@click.command("prepare")
@click.argument("dataset")
@click.option("--src", type=click.Path(), help="The raw release as distributed (see the dataset's docs).")
@click.option("--dst", required=True, type=click.Path(), help="Where the prepared data goes; later `run --data-root DST`.")
@click.option("--workers", type=click.IntRange(min=1), help="Parallel processes.  [default: all CPU cores]")
@click.option("--force", is_flag=True, help="Redo clips that are already prepared.")
@click.option("--pack-size", type=click.IntRange(min=0), default=256, show_default=True,
              help="Side of the packed store's frames (training reads it; a little above image_size); 0: no packed store.")
@click.option("--pack-only", is_flag=True, help="Only (re)write the packed store of the prepared --dst; needs no --src.")
def prepare_command(dataset: str, src: str | None, dst: str, workers: int | None, force: bool, pack_size: int,
                    pack_only: bool) -> None:
    """Turn DATASET's raw release (wav/flv/mp4 as distributed) into the layout its loader reads."""
    load_all()
    entry = DATASETS.get(dataset)
    preparer = entry.meta.get("prepare")
    if preparer is None:
        ready = ", ".join(e.name for e in DATASETS if "prepare" in e.meta)
        raise UserError(f"dataset {entry.name!r} needs no preparation; `prepare` is for {ready}")
    console = Console(highlight=False)
    if pack_only:
        if not pack_size or getattr(preparer, "pack", None) is None:
            raise UserError(f"--pack-only writes a packed store, which {entry.name} has none of"
                            if pack_size else "--pack-only with --pack-size 0 would write nothing; give a size")
        preparer.pack_store(Path(dst), pack_size, console)  # read_info's one line when DST is not prepared
        write_checksums(Path(dst))  # the store is listed, so `verify` and the load-time check cover it
        console.print(f"packed {entry.name} in {dst}/packed ({pack_size} px frames)", highlight=False)
        return
    if src is None:
        raise UserError("--src is needed (the raw release), except with --pack-only")
    source = Path(src)
    if not source.is_dir():
        raise UserError(f"--src {src!r} is not a folder; pass the folder of your {entry.name} copy")
    check_writable_dir(dst, "--dst")
    packs = {"pack_size": pack_size} if getattr(preparer, "pack", None) is not None else {}  # video datasets
    report = preparer(source, Path(dst), workers or os.cpu_count() or 1, force, console, **packs)
    if report is not None:
        print_report(console, entry.name, Path(dst), report)


@click.command("verify")
@click.argument("root", type=click.Path())
def verify_command(root: str) -> None:
    """Check a prepared folder against the checksums `prepare` wrote: every file's SHA-256, and every .npy
    array for NaN or infinite values. Lists each damaged file; exit 2 if any."""
    from ..data.checksums import verify_prepared

    folder = Path(root)
    if not folder.is_dir():
        raise UserError(f"{root!r} is not a folder; pass a folder written by `cmkd-bench prepare`")
    report = verify_prepared(folder)
    for name, problem in report.problems:
        click.echo(f"damaged: {folder / name} {problem}")
    if report.problems:
        name, problem = report.problems[0]
        raise UserError(f"{root}: {len(report.problems)} of {report.checked} prepared files are damaged (first: "
                        f"{name} {problem}); prepare the dataset again with --force")
    click.echo(f"ok: {report.checked} prepared files match their checksums")
