"""The committed leaderboard as one markdown document (LEADERBOARD.md), and the README's part of it.

Under protocol v2: the headline (its takeaway, the table, how to read it), then appendices: the official
defaults on the reported seeds (where they were run), the per-direction detail of the headline's rows,
the selected configuration of every study with the budget it spent and its space, the environments and
code revisions the records were made under (counts; run ids in the CSV and a collapsed list), and the
failed runs, candidates labelled as candidates. Records of an older protocol are left out (a line says
how many). `headline_section` is what the README shows: the takeaway and the table, nothing else.
"""

from __future__ import annotations

from typing import Any, Sequence

from ...artefacts import records as rec
from .grid import Cell, Grid, failed_grid, long_grid, stale_counts, wide_grid
from .headline import Headline, build_headline, headline_columns, headline_grid, is_selected
from .protocol import is_candidate, protocol_title, split_protocols
from .render_md import md_grid, md_line
from .summary import NO_KD, failed_runs, hparams_text, summarize, value_text

DETAIL_NOTE = ("Each table holds the headline's rows of one column with their spread: mean ± std over the reported "
               "seeds, the score at the last epoch, the number of seeds, Δ of the means, the paired Δ to no-kd with "
               "its 95% CI and the p-value Holm-adjusted within the column's tuned rows (the headline's family; "
               "† / ‡ where it is < 0.05). § marks rows with records made under another environment or code revision "
               "than most of their table (see Provenance).")
DEFAULTS_NOTE = ("Each method at its official defaults, run on the reported seeds with the tuned recipe, against the "
                 "same no-kd: what a method gives without tuning. Holm's correction is within each column's default "
                 "rows.")


def headline_section(records: Sequence[dict[str, Any]]) -> str | None:
    """The headline's title, takeaway and table in markdown (no notes), or None without protocol v2 rows."""
    split = split_protocols(records)
    headline = build_headline(split.records) if split.version >= 2 else None
    if headline is None:
        return None
    return md_grid(headline_grid(headline, notes=False))


def report_md(records: Sequence[dict[str, Any]], *, published_md: str = "") -> str | None:
    """LEADERBOARD.md's body under protocol v2 (None where the records hold no tuned protocol v2 row)."""
    split = split_protocols(records)
    headline = build_headline(split.records) if split.version >= 2 else None
    if headline is None:
        return None
    grid = headline_grid(headline)
    if note := split.note():
        grid.notes.append(note)
    reported = [record for record in split.records if not is_candidate(record)]
    blocks = [md_grid(grid)]
    letters = iter("ABCDEFGH")
    if defaults := defaults_md(reported):
        blocks.append(f"## Appendix {next(letters)}: defaults\n\n{DEFAULTS_NOTE}\n\n{defaults}")
    blocks.append(f"## Appendix {next(letters)}: per dataset and direction\n\n{DETAIL_NOTE}\n\n"
                  + "\n\n".join(md_grid(grid) for grid in detail_grids(headline)))
    blocks.append(f"## Appendix {next(letters)}: selected configurations\n\n"
                  + md_grid(selected_grid(headline)))
    blocks.append(f"## Appendix {next(letters)}: provenance\n\n" + provenance_md(split.records, headline))
    failed = failed_runs(split.records)
    blocks.append(f"## Appendix {next(letters)}: failed runs\n\n"
                  + (md_grid(failed_grid(failed)) if failed else "No run failed."))
    if published_md:
        blocks.append(f"## Appendix {next(letters)}: published (not measured here)\n\n{published_md}")
    return "\n\n".join(blocks) + "\n"


# ---------------------------------------------------------------------------------------------
# Appendices


def defaults_md(reported: Sequence[dict[str, Any]]) -> str | None:
    """The wide grid of the methods at their defaults, where any method's defaults were run on the
    reported seeds besides its study (a reported record of no selected configuration); else None."""
    if not any(record.get("status") == "completed" and not is_selected(record) and record["method"] != NO_KD
               for record in reported):
        return None
    tables = summarize(reported, "default")
    if not any(row.kind == "method" and row.method != NO_KD for table in tables for row in table.rows):
        return None
    grid = wide_grid(tables, None)
    grid.title = f"every method at its official defaults: {grid.title} · {protocol_title(2)}"
    return md_grid(grid)


def detail_grids(headline: Headline) -> list[Grid]:
    """The headline's columns one by one, in the long layout, the notes said once above them (DETAIL_NOTE)."""
    grids = []
    for table in headline.tables:
        grid = long_grid(table)
        grid.title = f"{grid.title} · {protocol_title(table.protocol)}"
        grid.notes, grid.paper_notes = [], None
        grids.append(grid)
    return grids


def space_text(space: dict[str, Any] | None) -> str:
    """"beta ∈ {10, 100} × stages ∈ {last, all} (4)": a study's space and its size."""
    if not space:
        return "—"
    parts, size = [], 1
    for key in sorted(space):
        values = space[key] if isinstance(space[key], list) else [space[key]]
        size *= max(1, len(values))
        parts.append(f"{key} ∈ {{{', '.join(value_text(value) for value in values)}}}")
    return f"{' × '.join(parts)} ({size})"


def study_cell(entry: dict[str, Any]) -> str:
    """"weight=0.1 · 8/8, 1 diverged": the selected settings, then the configurations evaluated of the budget."""
    configurations = entry.get("configurations") or []
    diverged = sum(1 for configuration in configurations if configuration.get("val") is None)
    selected = entry.get("selected")
    settings = hparams_text(selected) if isinstance(selected, dict) and selected else "the defaults"
    spent = f"{len(configurations)}/{entry.get('budget', '?')}"
    return f"{settings} · {spent}" + (f", {diverged} diverged" if diverged else "")


def selected_grid(headline: Headline) -> Grid:
    """One row per method (no-kd's recipe study first): its space, and per column the configuration its
    study selected with the configurations evaluated of the budget."""
    entries: dict[str, list[dict[str, Any] | None]] = {}
    for index, table in enumerate(headline.tables):
        for row in table.rows:
            if row.kind == "method" and row.tuning is not None:
                entries.setdefault(row.method, [None] * len(headline.tables))[index] = row.tuning
    methods = sorted(entries, key=lambda method: (method != NO_KD, method))
    rows = []
    for method in methods:
        spaces = list(dict.fromkeys(space_text(entry.get("space")) for entry in entries[method] if entry))
        label = f"{NO_KD} (recipe)" if method == NO_KD else method
        rows.append([Cell(label, label), Cell("; ".join(spaces))]
                    + [Cell(study_cell(entry) if entry else "—") for entry in entries[method]])
    columns = headline_columns(headline.tables)
    return Grid(title=f"the configuration each study selected on validation · {protocol_title(2)}",
                headers=["Method", "space (size)", *columns], rows=rows, align=["l"] * (2 + len(columns)),
                notes=["Cell: the selected settings (the defaults: none changed), then the configurations the study "
                       "evaluated of its budget (a diverged one counts as spent). no-kd (recipe): the study of the "
                       "recipe (learning rate, weight decay) on no-kd, which every method then used."])


def environment_text(signature: dict[str, str]) -> tuple[str, str, str]:
    """(code, libraries, threads) of an environment signature (records.environment_signature): the code as
    its source digest where the record has one, else its git revision (10 characters, and -dirty)."""
    libraries = ", ".join(f"{name} {version}" for name, version in signature.items()
                          if name not in ("threads", "revision", "source"))
    if "source" in signature:
        code = f"source {signature['source'][:10]}"
    else:
        revision = signature.get("revision", "unknown")
        head, dash, tail = revision.partition("-")
        code = head[:10] + dash + tail if len(head) == 40 else revision
    return code, libraries or "unknown", signature.get("threads", "?")


def provenance_md(records: Sequence[dict[str, Any]], headline: Headline) -> str:
    """Counts of records per code revision and environment, and which rows' records differ from most of
    their table (the § mark): counted by what differs, their run ids in a collapsed list (and all run
    ids in the CSV's run_ids)."""
    counts: dict[tuple[str, str, str], list[int]] = {}
    for record in records:
        key = environment_text(rec.environment_signature(record))
        count = counts.setdefault(key, [0, 0])
        count[1 if is_candidate(record) else 0] += 1
    lines = [md_line(["code", "libraries", "CPU threads", "reported records", "candidate records"]),
             "|---|---|---:|---:|---:|"]
    lines += [md_line([*key, str(reported), str(candidates)])
              for key, (reported, candidates) in sorted(counts.items(), key=lambda item: -sum(item[1]))]
    text = "\n".join(lines)
    rows = [row for table in headline.tables for row in table.rows]
    stale = sorted({run_id for row in rows for run_id in row.stale})
    if not stale:
        return text + "\n\nEvery row's records share their table's environment and code revision."
    return (text + f"\n\n§: {stale_counts(rows)} Rerun them with `python leaderboard/regenerate.py --rerun-stale`."
            f"\n\n<details><summary>the {len(stale)} run ids</summary>\n\n" + "\n".join(f"- {run_id}" for run_id in stale)
            + "\n\n</details>")
