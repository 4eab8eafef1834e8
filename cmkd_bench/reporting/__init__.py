"""Reporting: what the records say, as tables, figures and analyses (reads records, never writes them).

    leaderboard   records -> tables (rich, md, csv, latex, html), published numbers beside them
    plots         `cmkd-bench plot` figures
    freqsim       FD-CMKD's frequency similarity of two feature sets
    analysis      `cmkd-bench analyze` and the premise analysis behind leaderboard/ANALYSIS.md
"""
