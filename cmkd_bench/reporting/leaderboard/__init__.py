"""Leaderboard: run records (`result.json`) turned into tables of mean ± std over seeds.

A table holds only records that share dataset, task, direction, backbones, data options and
recipe, so that no number is ever averaged with one trained under a different protocol. The
teacher and the no-KD student are always rows (DESIGN.md, Protocol), and failed runs are listed
after the tables rather than hidden.

`summarize` is the data API; `render` turns it into rich, md, csv, latex or html text, and
`print_leaderboard` is what the CLI calls. Two layouts: "long" (one table per dataset, direction
and protocol, a row per method) and "wide" (one column per table, a row per method, with the
average rank across columns, like Table 1 of the CMKD papers). Method rows carry the paired t-test
against the no-KD row of their table, Holm-adjusted (marked in the wide layout and in html), and
`--with-published` adds numbers published in papers (published.csv, beside this file; also at
leaderboard/published.csv in a checkout) in columns of their own, labelled as published, beside ours.

The package, by stage:

    summary       records -> TableData of RowData (views, tuned rows, paired tests against no-kd)
    filters       --dataset, --method, --where
    published     published numbers: loading, matching to rows, their own grid
    grid          tables -> Grid of Cell in the long or wide layout, with notes and ranks
    render_md, render_latex, render_rich, render_html, render_csv    one module per format
    output        render() and print_leaderboard()

    protocol      protocol versions and roles: tables never mix protocols, candidates are never rows
    headline      protocol v2's tuned rows against the tuned no-kd, with the takeaway sentences
    report        LEADERBOARD.md under protocol v2: the headline, then the appendices

Reading records is cmkd_bench.artefacts.records' (re-exported here: load_records, tuning_entries, ...).
"""

from ...artefacts.records import (METRIC_NAMES as DEFAULT_METRIC, NO_SETTING, REQUIRED_KEYS, has_setting,
                                  load_records, record_setting, settings_of, tuning_entries)
from .filters import filter_records
from .grid import (BETTER_MARK, candidate_label, FAILED_HEADERS, HEADERS, MISSING, PUBLISHED_NOTE, RANK_NOTE, SIGNIFICANCE_LEVEL,
                   SIGNIFICANCE_NOTE, TUNED_NOTE, WORSE_MARK, Cell, Grid, average_ranks, published_grid,
                   significance_mark, tied_ranks, tuned_notes)
from .headline import Headline, HeadlineCell, HeadlineRow, build_headline, headline_grid, takeaway
from .output import FORMATS, LAYOUTS, print_leaderboard, render, render_published
from .protocol import CANDIDATE_ROLES, ProtocolSplit, is_candidate, protocol_role, protocol_version, split_protocols
from .published import (CONFIDENCES, DEFAULT_PUBLISHED, LEGACY_PUBLISHED_COLUMNS, PUBLISHED_COLUMNS,
                        PUBLISHED_METRICS, TEACHER_METHOD, PublishedIndex, PublishedValue, load_published)
from .render_csv import CSV_COLUMNS, PUBLISHED_CSV_COLUMNS
from .render_latex import latex_escape
from .summary import NO_KD, TUNED, VIEWS, RowData, TableData, direction_of, failed_runs, summarize, welch_p_value

__all__ = [
    "BETTER_MARK", "CANDIDATE_ROLES", "CONFIDENCES", "Headline", "HeadlineCell", "HeadlineRow", "ProtocolSplit",
    "build_headline", "candidate_label", "headline_grid", "is_candidate", "protocol_role", "protocol_version",
    "split_protocols", "takeaway", "CSV_COLUMNS", "Cell", "DEFAULT_METRIC", "DEFAULT_PUBLISHED", "FAILED_HEADERS",
    "FORMATS", "Grid", "HEADERS", "LAYOUTS", "LEGACY_PUBLISHED_COLUMNS", "MISSING", "NO_KD", "NO_SETTING",
    "PUBLISHED_COLUMNS", "PUBLISHED_CSV_COLUMNS", "PUBLISHED_METRICS", "PUBLISHED_NOTE", "PublishedIndex",
    "PublishedValue", "RANK_NOTE", "REQUIRED_KEYS", "RowData", "SIGNIFICANCE_LEVEL", "SIGNIFICANCE_NOTE",
    "TEACHER_METHOD", "TUNED", "TUNED_NOTE", "TableData", "VIEWS", "WORSE_MARK", "average_ranks", "direction_of",
    "failed_runs", "filter_records", "has_setting", "latex_escape", "load_published", "load_records",
    "print_leaderboard", "published_grid", "record_setting", "render", "render_published", "settings_of",
    "significance_mark", "summarize", "tied_ranks", "tuned_notes", "tuning_entries", "welch_p_value",
]
