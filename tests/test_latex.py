"""`leaderboard --format latex` makes tables that go into a paper as they are: a captioned float per table
(table* for the wide layout), notes wrapping below the tabular (no one-line \\multicolumn notes), only the
winning numbers bold, no run ids or shell commands, a comment naming the packages; --caption, --label and
--no-notes; and, where pdflatex is installed, the committed leaderboard compiles in a two-column article
without overfull boxes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cmkd_bench.reporting.leaderboard import load_records, render

from test_leaderboard import main_fixture_records, make_record, write_records
from test_reproducibility import with_environment

REPO = Path(__file__).resolve().parents[1]
PDFLATEX = shutil.which("pdflatex")
needs_pdflatex = pytest.mark.skipif(PDFLATEX is None, reason="no pdflatex installed (texlive-latex-extra)")


def paper_records() -> list[dict]:
    """no-kd, kd (seed 1 made under another torch: stale) and kd tuned to alpha=0.5, seeds 0-2."""
    records = []
    for seed in range(3):
        records.append(with_environment(make_record("no-kd", seed, 60.0 + seed, 59.0)))
        records.append(with_environment(make_record("kd", seed, 64.0 + seed, 63.0),
                                        **({"torch": "2.15.0"} if seed == 1 else {})))
        tuned = with_environment(make_record("kd", seed, 66.0 + seed, 65.5, hparams_changed={"alpha": 0.5},
                                             run_suffix="-a0.5"))
        tuned["tuning"] = [{"role": "selected", "budget": 8, "selection_seed": 0, "selected": {"alpha": 0.5}}]
        records.append(tuned)
    return records


PACKAGES = (r"% Tables from `cmkd-bench leaderboard --format latex`. Preamble: \usepackage{booktabs} (rules), "
            r"\usepackage{threeparttable} (notes), \usepackage{adjustbox} (shrinks a table too wide for its column "
            r"or too tall for the page).")
LONG = PACKAGES + r"""

\begin{table}[tbp]
\centering
\caption{synth-av $\cdot$ visual $\rightarrow$ audio $\cdot$ top1 (\%) $\cdot$ student small-cnn, teacher small-cnn $\cdot$ protocol v1}
\footnotesize
\setlength{\tabcolsep}{4pt}
\begin{adjustbox}{max totalsize={\linewidth}{0.85\textheight}}
\begin{threeparttable}
\begin{tabular}{lrrrr}
\toprule
Method & test & test@last & seeds (n) & \begin{tabular}[b]{@{}r@{}}$\Delta$ vs \\ no-KD\end{tabular} \\
\midrule
teacher (visual, small-cnn) & 80.00 $\pm$ 0.00 & 79.50 $\pm$ 0.00 & 3 &  \\
\midrule
no-kd & 61.00 $\pm$ 1.00 & 59.00 $\pm$ 0.00 & 3 &  \\
kd (tuned) & \textbf{\boldmath 67.00 $\pm$ 1.00 \textsuperscript{\dag}} & 65.50 $\pm$ 0.00 & 3 & \textbf{\boldmath +6.00} \\
kd § & 65.00 $\pm$ 1.00 \textsuperscript{\dag} & 63.00 $\pm$ 0.00 & 3 & +4.00 \\
\bottomrule
\end{tabular}
\begin{tablenotes}[flushleft]
\raggedright
\item[] \textsuperscript{\dag} / \textsuperscript{\ddag}: significantly better / worse than no-kd in the same table (paired t-test over seeds against no-kd, Holm-adjusted within the column, p \textless{} 0.05; pairs are the seeds both rows have, and a row with fewer than 2 has no test and no mark). After correction, 2 of the 2 tested rows are better than no-kd and 0 worse; the others do not differ from it at this level.
\item[] (tuned): the configuration with the best validation score among at most 8 configurations of the method's declared search space (the same budget for every method), run on seed 0 and then on every seed; test scores are never read for the selection.
\item[] kd (tuned) selected alpha=0.5.
\item[] §: some of the row's records were made under another environment (library versions, CPU threads) or code revision than most records of their table; they may differ by seed noise.
\end{tablenotes}
\end{threeparttable}
\end{adjustbox}
\end{table}
"""


def test_a_table_is_a_captioned_float_with_notes_below_the_tabular_and_only_the_winning_numbers_bold() -> None:
    text = render(paper_records(), "latex")
    assert text == LONG
    assert r"\multicolumn" not in text  # a one-line note as wide as its text made the table 872 pt too wide


def test_the_wide_layout_spans_both_columns() -> None:
    text = render(paper_records(), "latex", layout="wide")
    assert text.count(r"\begin{table*}[tbp]") == 1 and r"\begin{table}" not in text
    # mean ± std, the rank over common columns, then the aggregate: IQM of the paired differences [CI], P(> no-kd)
    assert r"kd (tuned) & \textbf{\boldmath 67.00 $\pm$ 1.00 \textsuperscript{\dag}} & 1.00 & +6.00 [+6.00, +6.00] & 1.00 \\" in text
    assert r"\item[] avg rank: the rank of the method's mean" in text


def test_run_ids_and_commands_stay_out_of_the_latex_and_the_md_command_runs_as_printed() -> None:
    records = paper_records()
    stale_run = records[4]["run_id"]
    for layout in ("long", "wide"):
        latex, md = render(records, "latex", layout=layout), render(records, "md", layout=layout)
        notes = latex.split(r"\begin{tablenotes}")[1]
        assert stale_run not in latex and "`" not in notes and "rerun" not in notes.lower()
        # the md notes are for whoever reruns: the run and a command that runs as printed (issue 28, item 7)
        assert f"- {stale_run}: torch 2.15.0, most 2.14.1." in md
        assert ("Rerun them with `cmkd-bench suite SUITE.yaml --rerun-stale`, SUITE.yaml being the suite file that "
                "made them (the committed leaderboard's: `python leaderboard/regenerate.py --rerun-stale`):") in md


def test_the_printed_rerun_command_is_one_suite_accepts(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cmkd_bench.cli import cli

    suite = tmp_path / "suite.yaml"
    suite.write_text(f"datasets: [synth-av]\nmethods: [no-kd]\nseeds: [0]\nepochs: 1\nout: {tmp_path / 'runs'}\n")
    result = CliRunner().invoke(cli, ["suite", str(suite), "--rerun-stale", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "to run" in result.output


def test_caption_label_and_no_notes() -> None:
    text = render(paper_records(), "latex", caption=r"Students' top-1 (\%).", label="tab:kd", notes=False)
    assert "\\caption{Students' top-1 (\\%).}\n\\label{tab:kd}\n" in text
    assert "tablenotes" not in text and "threeparttable}" not in text.split("\n", 1)[1] and "§:" not in text
    several = render(main_fixture_records(), "latex", caption="Students.", label="tab:kd")
    assert re.findall(r"\\label\{(.*?)\}", several) == ["tab:kd-1", "tab:kd-2", "tab:kd-3"]
    assert r"\caption{Students. synth-av $\cdot$ visual $\rightarrow$ audio $\cdot$" in several
    assert render(paper_records(), "md", notes=False).count("\n- ") == 0


@pytest.mark.parametrize("options, message", [
    (["--format", "latex", "--label", "tab kd"], "--label 'tab kd': a LaTeX label has no spaces"),
    (["--format", "latex", "--caption", "top-1 (%)"], "--caption has a bare %"),
    (["--format", "latex", "--caption", "{top-1"], "--caption has unbalanced braces"),
    (["--format", "md", "--caption", "x"], "--caption and --label are for --format latex, not md"),
])
def test_bad_caption_or_label_is_one_line_and_writes_nothing(tmp_path: Path, capsys, options: list[str],
                                                             message: str) -> None:
    from cmkd_bench.cli import main

    write_records(tmp_path / "runs", paper_records())
    with pytest.raises(SystemExit) as stopped:
        main(["leaderboard", str(tmp_path / "runs"), "--output", str(tmp_path / "table.tex"), *options])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "table.tex").exists()


def test_an_unwritable_output_is_one_line_and_leaves_no_partial_file(tmp_path: Path, capsys) -> None:
    from cmkd_bench.cli import main

    write_records(tmp_path / "runs", paper_records())
    (tmp_path / "table.tex").mkdir()  # a folder where the file should go
    with pytest.raises(SystemExit) as stopped:
        main(["leaderboard", str(tmp_path / "runs"), "--format", "latex", "--output", str(tmp_path / "table.tex")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1 and "cannot write the leaderboard" in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs", "table.tex"]


# --- a real LaTeX engine: the output compiles in a two-column article with no overfull box


def compile_log(latex: str, directory: Path) -> str:
    """`latex` in a two-column article whose preamble loads exactly the packages its first line names."""
    packages = re.findall(r"\\usepackage\{(\w+)\}", latex.splitlines()[0])
    preamble = "".join(rf"\usepackage{{{package}}}" + "\n" for package in packages)
    (directory / "table.tex").write_text(latex, encoding="utf-8")
    (directory / "paper.tex").write_text("\\documentclass[twocolumn]{article}\n" + preamble
                                         + "\\begin{document}\n\\input{table.tex}\n\\end{document}\n", encoding="utf-8")
    done = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=directory,
                          capture_output=True, text=True, timeout=120)
    log = (directory / "paper.log").read_text(encoding="latin-1")
    assert done.returncode == 0 and (directory / "paper.pdf").exists(), log[-3000:]
    return log


def assert_fits(log: str) -> None:
    problems = [line for line in log.splitlines()
                if line.startswith("!") or "Overfull \\hbox" in line or "Float too large" in line]
    assert problems == []


@needs_pdflatex
@pytest.mark.parametrize("layout", ["long", "wide"])
def test_the_committed_leaderboard_compiles_in_a_two_column_article(tmp_path: Path, layout: str) -> None:
    # (the output of `cmkd-bench leaderboard leaderboard/runs --format latex [--layout wide]`)
    latex = render(load_records([REPO / "leaderboard" / "runs"]), "latex", layout=layout)
    assert_fits(compile_log(latex, tmp_path))


@needs_pdflatex
def test_captions_labels_and_tables_without_notes_compile(tmp_path: Path) -> None:
    latex = render(main_fixture_records() + paper_records(), "latex", caption=r"Students (\%; see~\ref{tab:kd-1}).",
                   label="tab:kd", notes=False)
    assert_fits(compile_log(latex, tmp_path))
