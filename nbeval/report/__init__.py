"""`nbeval report`: tonight's run against its baseline — paired statistics, verdicts, flip
galleries and plots — as index.html and summary.md, logged to the run; its exit code gates CI."""
