"""Artefacts: the files a run writes and later readers trust, below training and reporting alike.

    files        atomic writes, digests beside saved tensors, locks, safe loading, one-line I/O errors
    records      the run record (result.json): the one contract between running and reporting
    provenance   what a record says about where it was made: versions, threads, code revision
"""
