"""`suite --executor slurm` without a cluster: one line where there is no SLURM, sbatch options
(`--slurm KEY=VALUE`, a suite file's `slurm:`) checked and written into the batch script submitit
submits (through fake `sbatch` / `srun` / `sacct` on PATH), and the dry run's submission plan."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from cmkd_bench.errors import UserError
from cmkd_bench.experiments import executors
from cmkd_bench.experiments.scheduler import PlannedRun
from cmkd_bench.training.runner import RunRequest

from conftest import cli
from test_cli import assert_one_line_error

pytest.importorskip("submitit")

GRID = ["--methods", "no-kd,kd", "--datasets", "mfh-gauss", "--directions", "default", "--device", "cpu",
        "--epochs", "1", "--set", "train=32", "--set", "val=16", "--set", "test=16"]

# A fake sbatch: keeps the batch script and the SLURM variables it was started with, then answers as
# sbatch does (or refuses, where SBATCH_FAILS is set).
FAKE_SBATCH = """#!/bin/sh
if [ -n "$SBATCH_FAILS" ]; then echo "sbatch: error: Invalid account or account/partition combination" >&2; exit 1; fi
cp "$1" "$CAPTURE/script.sh"
env | grep -E '^SLURM' > "$CAPTURE/environment.txt"
echo "Submitted batch job 4242"
"""


def fake_slurm(folder: Path) -> Path:
    """A folder with sbatch, srun and sacct stand-ins, for PATH."""
    bin_dir = folder / "fake-slurm"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 0\n"), ("sacct", "#!/bin/sh\nexit 0\n")):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def no_slurm_path(tmp_path: Path) -> str:
    """A PATH with the interpreter's folder and nothing else (no sbatch, srun, sacct, wherever this runs)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    return os.pathsep.join([str(Path(sys.executable).parent), str(empty)])


def planned(tmp_path: Path, count: int) -> list[PlannedRun]:
    return [PlannedRun(RunRequest(method="no-kd", dataset="mfh-gauss", seed=seed, out=str(tmp_path / "runs")),
                       f"run-{seed}", f"run {seed}", "new") for seed in range(count)]


def test_without_slurm_the_suite_is_one_line_exit_2_and_leaves_nothing(tmp_path) -> None:
    out = tmp_path / "runs"
    result = cli("suite", *GRID, "--seeds", "0", "--executor", "slurm", "--out", str(out),
                 env={"PATH": no_slurm_path(tmp_path)}, cwd=tmp_path)
    assert_one_line_error(result, "--executor slurm: no SLURM on this machine (sbatch, srun, sacct not found)",
                          "--executor local", "--dry-run")
    assert not out.exists() and not (tmp_path / ".submitit").exists()


def test_the_dry_run_shows_the_job_arrays_waves_and_resources_without_slurm(tmp_path) -> None:
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text("datasets: [mfh-gauss]\nmethods: [no-kd, kd]\nslurm: {account: proj, qos: low}\n")
    out = tmp_path / "runs"
    result = cli("suite", str(suite_file), *GRID[4:], "--seeds", "0,1", "--executor", "slurm", "--out", str(out),
                 "--partition", "gpu", "--cpus-per-run", "4", "--time", "1-00:00:00", "--array-parallelism", "1",
                 "--slurm", "qos=high", "--slurm", "mem=32G", "--slurm", "setup=module load cuda", "--dry-run",
                 env={"PATH": no_slurm_path(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "4 runs: 0 already completed (skipped), 0 to resume, 4 to run" in lines
    assert "  wave 1: a job array of 2 tasks, at most 1 at once: the runs that train a teacher not cached yet, " \
           "one per teacher" in lines  # seeds 0 and 1: two teachers
    assert any(line.startswith("  wave 2: a job array of 2 tasks, at most 1 at once: the other runs") for line in lines)
    assert ("  each task: 4 CPUs (also its threads), 0 GPUs, memory 32G, time 1-00:00:00 (1440 min), partition gpu, "
            "account proj") in lines
    # the file's qos is overridden by --slurm, its account kept
    assert "  sbatch options: --account=proj --qos=high --mem=32G" in lines
    assert "  setup (each job, before its run): module load cuda" in lines
    assert any("keep it alive" in line for line in lines) and not out.exists()


def test_sbatch_options_reach_the_batch_script_submitit_writes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", os.pathsep.join([str(fake_slurm(tmp_path)), os.environ["PATH"]]))
    monkeypatch.setenv("CAPTURE", str(tmp_path))
    settings = executors.cluster_settings(
        "slurm", "gpu", None, 4, "01:30:00", 8,
        ("account=proj", "qos=high", "mem=32G", "--constraint=a100", "reservation=r1", "requeue",
         "setup=module load cuda", "setup=source env.sh"), {"mail-type": "END", "account": "other"}, "suite.yaml")
    executor = executors.make_executor(settings, "cuda", tmp_path / ".submitit")
    with executor.batch():
        jobs = [executor.submit(executors.RunJob(["true"], str(tmp_path / f"run-{i}"), 4)) for i in range(3)]
    assert jobs[0].job_id == "4242_0"
    script = (tmp_path / "script.sh").read_text().splitlines()
    for line in ("--account=proj", "--qos=high", "--mem=32G", "--constraint=a100", "--reservation=r1", "--requeue",
                 "--mail-type=END", "--partition=gpu", "--cpus-per-task=4", "--gpus-per-node=1", "--time=90",
                 "--array=0-2%3", "--job-name=cmkd-bench"):
        assert f"#SBATCH {line}" in script, (line, script)
    srun = next(i for i, line in enumerate(script) if line.startswith("srun "))
    assert script.index("module load cuda") < script.index("source env.sh") < srun


def test_a_suite_submitted_from_a_slurm_job_hides_that_jobs_variables_from_sbatch(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", os.pathsep.join([str(fake_slurm(tmp_path)), os.environ["PATH"]]))
    monkeypatch.setenv("CAPTURE", str(tmp_path))
    for name, value in (("SLURM_JOB_ID", "77"), ("SLURM_MEM_PER_NODE", "2000"), ("SLURM_CONF", "/etc/slurm/x.conf")):
        monkeypatch.setenv(name, value)
    settings = executors.cluster_settings("slurm", None, None, 1, None, None)
    executor = executors.make_executor(settings, "cpu", tmp_path / ".submitit")
    executors._submit_wave(executor, planned(tmp_path, 1), settings, "cpu", (), lambda *_: ["true"], None)
    seen = (tmp_path / "environment.txt").read_text().split()
    assert seen == ["SLURM_CONF=/etc/slurm/x.conf"]  # the driver job's own variables stay behind
    assert os.environ["SLURM_JOB_ID"] == "77" and os.environ["SLURM_MEM_PER_NODE"] == "2000"  # and come back


def test_sbatch_refusing_the_array_is_one_line_and_the_folder_it_made_goes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", os.pathsep.join([str(fake_slurm(tmp_path)), os.environ["PATH"]]))
    monkeypatch.setenv("SBATCH_FAILS", "1")
    monkeypatch.setattr(executors, "teacher_waves", lambda runs: ([], runs))  # no teacher to look up
    settings = executors.cluster_settings("slurm", None, None, 1, None, None, ("account=nope",))
    out = tmp_path / "runs"
    with pytest.raises(UserError, match=r"^sbatch refused the job array: sbatch: error: Invalid account or "
                                        r"account/partition combination; check --partition, --slurm"):
        executors.submit_runs(planned(tmp_path, 2), settings, "cpu", str(out), (), lambda *_: ["true"])
    assert not out.exists()


@pytest.mark.parametrize("flag, message", [
    ("acount=proj", "error: --slurm 'acount' is no sbatch option; did you mean 'account'? (sbatch's long options, "
                    "see `man sbatch`; e.g. --slurm account=myproject)"),
    ("partition=gpu", "error: --slurm partition: the suite sets it from --partition; use --partition instead"),
    ("cpus-per-task=4", "error: --slurm cpus-per-task: the suite sets it from --cpus-per-run; use --cpus-per-run instead"),
    ("output=x.log", "error: --slurm output: submitit sets it (the job array, its logs, the pre-emption signal); "
                     "drop it"),
    ("ntasks=2", "error: --slurm ntasks: each run is one task on one node (multi-GPU runs in a job are not wired in); "
                 "drop it"),
    ("mem=lots", "error: --slurm mem=lots: not a memory size; write for example 32G or 4000M"),
    ("account", "error: --slurm account=true: it takes a value, e.g. --slurm account=myproject"),
    ("=proj", "error: --slurm '=proj' is not KEY=VALUE; write for example --slurm account=myproject"),
    ("Acc ount=x", "error: --slurm 'Acc ount' is no sbatch option name; write KEY=VALUE with KEY as `man sbatch` "
                   "spells it, e.g. --slurm account=myproject"),
])
def test_a_bad_slurm_option_is_one_line_and_exit_2(tmp_path, flag, message) -> None:
    result = cli("suite", *GRID, "--seeds", "0", "--executor", "slurm", "--out", str(tmp_path / "runs"),
                 "--slurm", flag, "--dry-run")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [message], result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_suite_files_slurm_keys_are_checked_and_named_by_the_file(tmp_path) -> None:
    with pytest.raises(UserError, match=r"^suite file 's.yaml': slurm: 'qoss' is no sbatch option; did you mean 'qos'"):
        executors.cluster_settings("slurm", None, None, None, None, None, (), {"qoss": "high"}, "suite file 's.yaml'")
    # a local suite leaves the file's slurm: aside, so one file serves both
    assert executors.cluster_settings("local", None, None, None, None, None, (), {"qoss": "high"}).slurm == ()
    with pytest.raises(UserError, match=r"^--slurm is an option of --executor slurm"):
        executors.cluster_settings("local", None, None, None, None, None, ("account=x",))


def test_the_options_routed_to_submitit_are_parameters_it_takes() -> None:
    from submitit import SlurmExecutor

    assert executors.SUBMITIT_OPTIONS <= SlurmExecutor._valid_parameters()
    # and the sbatch options passed through slurm_additional_parameters are none of submitit's own
    assert not executors.SBATCH_OPTIONS & SlurmExecutor._valid_parameters()
