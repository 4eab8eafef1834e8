"""Experiments: many runs at once, a suite file, tuning studies, and where the runs execute.

    scheduler   the runs of a suite as planned commands, with their outcomes
    executors   local processes (--jobs) and SLURM job arrays (submitit)
    suite       `cmkd-bench suite`: a suite file expanded into runs, run and summarised
    tuning      `cmkd-bench tune` and the suite's tuning studies: search spaces, budgets, selection on validation
"""
