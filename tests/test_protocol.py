"""Protocol 2 (issue 30) end to end on tiny data: the recipe tuned on no-kd first and used by every
run (teacher included), exactly the budget spent per study, candidates on a selection seed that is
never reported, and records that say their protocol, role and recipe study."""

from __future__ import annotations

import json

from conftest import cli
from test_cli import assert_one_line_error

SUITE = """datasets: [synth-av]
methods: [no-kd, kd]
directions: default
seeds: [0, 1]
epochs: 1
sets: {{train: 64, val: 32, test: 32, image_size: 16}}
tune: {{protocol: 2, budget: {budget}, selection_seed: 1000, recipe: {{lr: [0.2, 1, 2], weight_decay: [1]}}}}
out: {out}
"""


def records(out):
    return [json.loads(path.read_text()) for path in sorted(out.glob("*/result.json"))]


def test_protocol_2_tunes_the_recipe_first_and_reports_only_unselected_seeds(tmp_path):
    out = tmp_path / "runs"
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.format(budget=2, out=out))
    dry = cli("suite", str(suite), "--dry-run", "--device", "cpu")
    assert dry.returncode == 0, dry.stderr
    assert "recipe of synth-av: 2 of 3 configurations of no-kd in 1 direction on seed 1000" in dry.stdout
    assert not out.exists()  # a dry run writes nothing

    done = cli("suite", str(suite), "--jobs", "2", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    [recipe_file] = (out / "tuning").glob("recipe-synth-av-*.json")
    recipe = json.loads(recipe_file.read_text())
    assert recipe["spent"] == recipe["budget"] == 2 and recipe["selection_seed"] == 1000
    assert recipe["configurations"][0]["recipe"]["lr"] == recipe["base"]["lr"]  # the dataset's own recipe first
    vals = [c["val"] for c in recipe["configurations"]]
    assert recipe["selected"] == recipe["configurations"][max(range(2), key=lambda i: (vals[i], -i))]["recipe"]
    [study_file] = [p for p in (out / "tuning").glob("kd-*.json")]
    study = json.loads(study_file.read_text())
    assert study["spent"] == study["budget"] == 2 and study["protocol"] == 2 and study["selection_seed"] == 1000

    made = records(out)
    assert all(r["protocol"]["version"] == 2 and r["protocol"]["budget"] == 2 for r in made)
    by_role: dict[str, list[dict]] = {}
    for record in made:
        by_role.setdefault(record["protocol"]["role"], []).append(record)
    assert {r["seed"] for r in by_role["recipe-candidate"] + by_role["candidate"]} == {1000}
    assert {r["seed"] for r in by_role["reported"]} == {0, 1}
    assert len(by_role["recipe-candidate"]) == 2 and len(by_role["candidate"]) == 2
    assert sorted(r["method"] for r in by_role["reported"]) == ["kd", "kd", "no-kd", "no-kd"]
    for record in by_role["reported"] + by_role["candidate"]:  # every run, and its teacher, under the selected recipe
        assert record["protocol"]["recipe"]["study"] == recipe["study"]
        for key, value in recipe["selected"].items():
            assert record["config"]["recipe"][key] == value
            assert record["teacher"]["recipe"][key] == value
    for record in by_role["reported"]:
        assert record["protocol"]["reported_seeds"] == [0, 1] and record["protocol"]["selection_seed"] == 1000
        selected = [e for e in record["tuning"] if e["role"] == "selected"]
        assert len(selected) == 1
        assert selected[0]["study"] == (recipe["study"] if record["method"] == "no-kd" else study["study"])

    table = cli("leaderboard", str(out), "--format", "md")
    assert table.returncode == 0, table.stderr
    assert "1000" not in "".join(line for line in table.stdout.splitlines() if line.startswith("| kd"))

    again = cli("suite", str(suite), "--jobs", "2", "--device", "cpu")  # resumes: nothing to run, same selection
    assert again.returncode == 0, again.stderr
    assert "(2 already completed)" in again.stdout and json.loads(recipe_file.read_text())["selected"] == recipe["selected"]
    assert len(records(out)) == len(made)


def test_protocol_2_refuses_a_reported_selection_seed_a_grid_and_a_too_small_space(tmp_path):
    out = tmp_path / "runs"
    suite = tmp_path / "suite.yaml"
    for text, fragment in [
        (SUITE.format(budget=2, out=out).replace("seeds: [0, 1]", "seeds: [0, 1000]"), "also a reported seed"),
        (SUITE.format(budget=2, out=out) + "grid: {T: [1, 2]}\n", "has no grid"),
        (SUITE.format(budget=9, out=out), "fewer than the budget 9"),
    ]:
        suite.write_text(text)
        assert_one_line_error(cli("suite", str(suite), "--device", "cpu"), fragment)
        assert not out.exists()


def test_a_suite_with_multimodal_teachers_adds_their_columns_for_the_methods_that_accept_one(tmp_path):
    suite = tmp_path / "suite.yaml"
    out = tmp_path / "runs"
    suite.write_text(f"datasets: [synth-av]\nmethods: [no-kd, kd, mgdfr]\nteachers: [cross, multimodal]\nseeds: [0]\n"
                     f"sets: {{train: 64, val: 32, test: 32, image_size: 16}}\nout: {out}\n")
    done = cli("suite", str(suite), "--dry-run", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    runs = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("run ")]
    fused = [run for run in runs if "visual_audio2" in run]  # the teacher of every modality, for each student
    assert sorted(run.split("-synth")[0] for run in fused) == ["kd", "kd", "no-kd", "no-kd"]  # mgdfr refuses one
    assert len(runs) == 10 and not out.exists()
    suite.write_text(suite.read_text().replace("seeds: [0]", "seeds: [0]\ntune: {protocol: 2, budget: 8}"))
    done = cli("suite", str(suite), "--dry-run", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "no-kd in 2 directions" in done.stdout  # the recipe study: one direction per student modality
    assert "kd on synth-av visual+audio→visual" in done.stdout and "mgdfr on synth-av visual+audio" not in done.stdout
    suite.write_text(suite.read_text().replace("teachers: [cross, multimodal]", "teachers: [fused]"))
    done = cli("suite", str(suite), "--dry-run", "--device", "cpu")
    assert done.returncode == 2 and "teachers 'fused' is not one of cross, multimodal" in done.stderr
