"""A leaderboard someone else can reproduce: the pinned environment, each record's environment,
no records from a dirty tree, stale records marked in tables and rerun by `suite --rerun-stale`."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

from cmkd_bench.artefacts import records
from cmkd_bench.cli.run import run_arguments
from cmkd_bench.experiments.plan import expand, mark_stale, plan_text, suite_from_mapping
from cmkd_bench.reporting.leaderboard import render, summarize
from cmkd_bench.reporting.leaderboard.summary import stale_runs
from cmkd_bench.reporting.leaderboard.grid import STALE_MARK
from cmkd_bench.training import runner

from test_leaderboard import make_record

REPO = Path(__file__).resolve().parents[1]
TINY = ["train=64", "val=32", "test=32", "image_size=16"]
ENVIRONMENT = {"libraries": {"torch": "2.14.1", "timm": "1.0.31", "segmentation_models_pytorch": "0.6.0",
                             "albumentations": "2.0.8", "numpy": "2.4.6", "scipy": "1.17.1"},
               "threads": 2, "git_revision": "a" * 40}


def with_environment(record: dict, **changes) -> dict:
    environment = json.loads(json.dumps(ENVIRONMENT))
    for key, value in changes.items():
        if key in environment["libraries"]:
            environment["libraries"][key] = value
        else:
            environment[key] = value
    return {**record, "environment": environment}


# --- the pinned environment


def test_make_installs_with_the_constraints_that_pin_every_library_that_changes_numbers() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "pip install -q -c constraints.txt -e '.[test]'" in makefile
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = {name.lower().replace("_", "-"): version for name, version in pins.items()}
    for name in (*records.NUMERIC_LIBRARIES, "torchvision", "click", "rich", "pyyaml"):
        assert re.fullmatch(r"[0-9][0-9a-z.+]*", pins[name.replace("_", "-")]), name
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"torch>=' in pyproject and "==" not in pyproject  # a plain install keeps lower bounds


# --- each record's environment


def test_a_record_holds_the_versions_threads_and_revision_its_numbers_depend_on() -> None:
    environment = runner.environment()
    assert set(environment["libraries"]) == set(records.NUMERIC_LIBRARIES)
    assert environment["threads"] >= 1 and "git_revision" in environment
    assert set(records.NUMERIC_LIBRARIES) <= set(runner.versions())  # `versions` is kept, and extended
    signature = records.environment_signature({"environment": environment})
    assert set(signature) >= {*records.NUMERIC_LIBRARIES, "threads"}


def test_older_records_give_what_their_versions_device_and_revision_say() -> None:
    old = {"versions": {"torch": "2.15.0", "timm": "1.0.31"}, "device": "cpu (x86_64, 4 threads)",
           "git_revision": "abc"}
    assert records.environment_signature(old) == {"torch": "2.15.0", "timm": "1.0.31", "threads": "4",
                                                  "revision": "abc"}


def test_outliers_are_the_records_that_differ_from_the_majority() -> None:
    group = [with_environment(make_record("kd", seed, 60.0, 59.0)) for seed in range(3)]
    group[1] = with_environment(group[1], torch="2.15.0", threads=8)
    assert records.environment_outliers(group) == {group[1]["run_id"]: ["threads 8, most 2", "torch 2.15.0, most 2.14.1"]}
    assert records.environment_outliers(group[:1] + group[2:]) == {}


# --- tables mark stale records


def stale_fixture() -> list[dict]:
    recs = []
    for seed in range(3):
        recs.append(with_environment(make_record("no-kd", seed, 60.0 + seed, 59.0)))
        recs.append(with_environment(make_record("kd", seed, 64.0 + seed, 63.0)))
    recs[3] = with_environment(recs[3], torch="2.15.0")  # kd seed 1
    return recs


def test_the_leaderboard_marks_a_row_with_a_stale_record_and_says_what_differs() -> None:
    recs = stale_fixture()
    table = summarize(recs)[0]
    rows = {row.label: row for row in table.rows}
    assert rows["kd"].stale == {recs[3]["run_id"]: ["torch 2.15.0, most 2.14.1"]} and not rows["no-kd"].stale
    for layout in ("wide", "long"):
        text = render(recs, "md", layout=layout)
        assert re.search(rf"\| (\*\*)?kd {STALE_MARK}(\*\*)? \|", text) and f"no-kd {STALE_MARK}" not in text
        assert f"{recs[3]['run_id']}: torch 2.15.0, most 2.14.1." in text and "--rerun-stale" in text
    for fmt in ("md", "rich", "latex", "html"):  # (csv, a data export, has no notes)
        assert STALE_MARK in render(recs, fmt), fmt
    assert STALE_MARK not in render([with_environment(r) for r in recs], "md", layout="wide")


def teacher_fixture(*, hashes: bool) -> list[dict]:
    """no-kd, kd and fitnet on seeds 0-2, one teacher per seed; kd's seed-1 record distilled from that
    seed's teacher trained again elsewhere: same key, other weights (and other scores)."""
    recs = []
    for method, base in (("no-kd", 60.0), ("kd", 64.0), ("fitnet", 62.0)):
        for seed in range(3):
            other = method == "kd" and seed == 1
            record = with_environment(make_record(method, seed, base + seed, base - 1,
                                                  teacher_metrics=(80.25 if other else 80.0, 79.5)))
            if hashes:
                record["teacher"]["weights_sha256"] = ("b" if other else "a") * 64
            recs.append(record)
    return recs


def test_a_record_distilled_from_another_teacher_under_the_same_key_is_marked_and_rerun() -> None:
    for hashes in (False, True):
        recs = teacher_fixture(hashes=hashes)
        odd = recs[4]["run_id"]  # kd seed 1
        assert records.teacher_outliers(recs) == {odd: records.TEACHER_DIFFERS}
        rows = {row.label: row for row in summarize(recs)[0].rows}
        assert rows["kd"].stale == {odd: [records.TEACHER_DIFFERS]}
        assert not rows["no-kd"].stale and not rows["fitnet"].stale
        assert stale_runs(recs) == {odd: [records.TEACHER_DIFFERS]}
        assert f"kd {STALE_MARK}" in render(recs, "md", layout="wide")
    # by hash where every record of the key has one: equal scores from other weights still differ
    recs = teacher_fixture(hashes=True)
    for record in recs:
        record["teacher"]["metrics"] = {"val": 80.0}
    assert records.teacher_outliers(recs) == {recs[4]["run_id"]: records.TEACHER_DIFFERS}
    # the same teacher everywhere: nothing to mark; a record without a teacher is not judged
    same = [with_environment(make_record(m, seed, 60.0, 59.0)) for m in ("no-kd", "kd") for seed in range(3)]
    same[0]["teacher"] = None
    assert records.teacher_outliers(same) == {} and stale_runs(same) == {}


def test_selection_candidates_are_not_judged_by_the_rows_teachers() -> None:
    # a study's candidates distil from the selection seed's teacher; a study made on another host than
    # the one its table's reported runs came from is no row's pairing problem
    recs = teacher_fixture(hashes=False)
    for record in recs[3:6]:
        record["protocol"] = {"version": 2, "role": "candidate"}
    assert all(records.TEACHER_DIFFERS not in differs for differs in stale_runs(recs).values())


# --- suite --rerun-stale


def test_rerun_stale_reruns_the_marked_runs_under_their_run_ids(tmp_path: Path) -> None:
    suite = suite_from_mapping({"datasets": ["synth-av"], "methods": ["no-kd", "kd"], "directions": "default",
                                "seeds": [0, 1, 2], "sets": TINY, "epochs": 1, "out": str(tmp_path)})
    planned = expand(suite)
    for index, run in enumerate(planned):
        record = with_environment(make_record(run.request.method, run.request.seed, 60.0, 59.0),
                                  **({"torch": "2.15.0"} if index == 4 else {}))
        record.update(run_id=run.run_id, config={"recipe": {"epochs": 1}})
        run.run_dir.mkdir(parents=True)
        records.write_record(record, run.run_dir / "result.json")
    planned = expand(suite)
    assert all(run.state == "done" for run in planned)
    assert mark_stale(planned) == 1
    stale = [run for run in planned if run.state == "stale"]
    assert [run.run_id for run in stale] == [planned[4].run_id]
    assert stale[0].request.force and "--force" in run_arguments(stale[0].request)
    assert "rerun (stale)" in plan_text(planned) and "torch 2.15.0, most 2.14.1" in plan_text(planned)
    assert "5 already completed (skipped), 0 to resume, 1 to run" in plan_text(planned)


# --- no leaderboard records from a dirty tree


def load_regenerate():
    spec = importlib.util.spec_from_file_location("regenerate", REPO / "leaderboard" / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(root), "PATH": "/usr/bin:/bin"})


def test_regenerate_refuses_a_dirty_tree_except_for_its_own_outputs(tmp_path: Path) -> None:
    regenerate = load_regenerate()
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("table\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "one")
    assert regenerate.dirty_tree_error(tmp_path) is None
    (tmp_path / "leaderboard" / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "leaderboard" / "runs" / "r1" / "result.json").write_text("{}")
    (tmp_path / "README.md").write_text("new table\n")
    assert regenerate.dirty_tree_error(tmp_path) is None  # what regeneration itself writes
    (tmp_path / "code.py").write_text("x = 2\n")
    (tmp_path / "plugin.py").write_text("")
    error = regenerate.dirty_tree_error(tmp_path)
    assert error is not None and "\n" not in error and "code.py, plugin.py" in error and "--allow-dirty" in error
    (tmp_path / "elsewhere").mkdir()
    result = subprocess.run([sys.executable, str(REPO / "leaderboard" / "regenerate.py"), "--help"],
                            capture_output=True, text=True)
    assert "--allow-dirty" in result.stdout and "--rerun-stale" in result.stdout


def test_suite_dry_run_with_rerun_stale_lists_the_stale_runs(tmp_path: Path) -> None:
    suite = suite_from_mapping({"datasets": ["synth-av"], "methods": ["no-kd"], "directions": "default",
                                "seeds": [0, 1, 2], "sets": TINY, "epochs": 1, "out": str(tmp_path)})
    for index, run in enumerate(expand(suite)):
        record = with_environment(make_record("no-kd", run.request.seed, 60.0, 59.0),
                                  **({"threads": 8} if index == 0 else {}))
        record.update(run_id=run.run_id, config={"recipe": {"epochs": 1}})
        run.run_dir.mkdir(parents=True)
        records.write_record(record, run.run_dir / "result.json")
    flags = [arg for setting in TINY for arg in ("--set", setting)]
    args = ["suite", "--methods", "no-kd", "--datasets", "synth-av", "--seeds", "0,1,2", "--directions", "default",
            "--epochs", "1", "--out", str(tmp_path), "--dry-run", *flags]
    plain = subprocess.run([sys.executable, "-m", "cmkd_bench", *args], capture_output=True, text=True)
    stale = subprocess.run([sys.executable, "-m", "cmkd_bench", *args, "--rerun-stale"], capture_output=True,
                           text=True)
    assert plain.returncode == 0 and "rerun (stale)" not in plain.stdout
    assert stale.returncode == 0 and stale.stdout.count("rerun (stale)") == 1 and "threads 8, most 2" in stale.stdout


def test_a_records_revision_is_dirty_for_changed_code_but_not_for_regenerated_results(tmp_path: Path, monkeypatch) -> None:
    from cmkd_bench.artefacts import provenance

    package = tmp_path / "cmkd_bench"
    package.mkdir()
    (package / "provenance.py").write_text("x = 1\n")
    (tmp_path / "leaderboard").mkdir()
    for name in ("LEADERBOARD.md", "leaderboard.csv", "regenerate.py"):
        (tmp_path / "leaderboard" / name).write_text("one\n")
    (tmp_path / "README.md").write_text("table\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "one")
    monkeypatch.setattr(provenance, "__file__", str(package / "provenance.py"))  # the checkout it runs from
    clean = provenance.git_revision()
    assert clean is not None and len(clean) == 40
    for name in ("leaderboard/LEADERBOARD.md", "leaderboard/leaderboard.csv", "README.md"):
        (tmp_path / name).write_text("regenerated\n")
    (tmp_path / "leaderboard" / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "leaderboard" / "runs" / "r1" / "result.json").write_text("{}")
    (tmp_path / "cmkd_bench" / "untracked.py").write_text("")  # untracked: as before, not part of the flag
    assert provenance.git_revision() == clean
    (tmp_path / "leaderboard" / "regenerate.py").write_text("changed\n")  # code under leaderboard/ counts
    assert provenance.git_revision() == clean + "-dirty"


def test_the_source_digest_ignores_commits_of_results_and_follows_commits_of_code(tmp_path) -> None:
    """A leaderboard regenerated over several sittings commits its tables between them: those commits
    change the revision, not the code, so records made before and after are one source."""
    from cmkd_bench.artefacts import provenance

    repo = tmp_path / "repo"
    (repo / "cmkd_bench").mkdir(parents=True)
    (repo / "cmkd_bench" / "engine.py").write_text("EPOCHS = 12\n")
    (repo / "methods").mkdir()
    (repo / "methods" / "kd.py").write_text("T = 4\n")
    (repo / "leaderboard").mkdir()
    (repo / "leaderboard" / "LEADERBOARD.md").write_text("old\n")

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                       capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "code")

    def digest() -> str:
        return provenance.source_digest(repo / "cmkd_bench")

    first = digest()
    assert len(first) == 12 and provenance.SOURCE_PATHS[0] == "cmkd_bench"
    (repo / "leaderboard" / "LEADERBOARD.md").write_text("new\n")
    git("commit", "-qam", "tables")
    assert digest() == first
    (repo / "methods" / "kd.py").write_text("T = 2\n")
    assert digest() == first + "-dirty"
    git("commit", "-qam", "a method changed")
    assert digest() not in (first, first + "-dirty")
    assert records.environment_signature({"environment": {"source": first, "git_revision": "abc"}}) == {"source": first}


def test_records_name_the_cpu_model_and_tables_compare_it() -> None:
    environment = runner.environment()
    if environment["cpu"] is not None:
        assert records.environment_signature({"environment": environment})["cpu"] == environment["cpu"]
    group = [with_environment(make_record("kd", seed, 60.0, 59.0)) for seed in range(3)]
    for record in group:
        record["environment"]["cpu"] = "AMD EPYC"
    group[2]["environment"]["cpu"] = "Intel Xeon"
    assert records.environment_outliers(group) == {group[2]["run_id"]: ["cpu Intel Xeon, most AMD EPYC"]}


def test_the_cpu_names_its_family_model_and_kernel_instruction_set() -> None:
    """Two hosts that both call themselves "AMD EPYC" gave different teachers from one seed: the record must
    tell them apart (cpuinfo in the format Linux writes it, tab before the colon, blank line between CPUs)."""
    from cmkd_bench.artefacts.provenance import cpu_model

    def cpuinfo(model: int) -> str:
        block = (f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}\n"
                 f"model name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu avx2\n\n")
        return block + block.replace("processor\t: 0", "processor\t: 1").replace(f": {model}\n", ": 99\n")

    zen4, zen3 = cpu_model(cpuinfo(17), "AVX512"), cpu_model(cpuinfo(1), "AVX2")
    assert zen4 == "AMD EPYC (family 25 model 17, AVX512)" and zen3 == "AMD EPYC (family 25 model 1, AVX2)"
    assert cpu_model("model name\t: Apple M2\n", "") == "Apple M2"
    group = [with_environment(make_record("kd", seed, 60.0, 59.0)) for seed in range(3)]
    for record, cpu in zip(group, (zen4, zen4, zen3)):
        record["environment"]["cpu"] = cpu
    assert records.environment_outliers(group) == {group[2]["run_id"]: [f"cpu {zen3}, most {zen4}"]}
