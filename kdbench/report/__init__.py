"""The report: every ``result.json`` below a folder -> one pandas DataFrame -> tables and plots.

``python -m kdbench.report results/ [--format text|markdown|csv|latex|html] [--out DIR] [--all]
[--baseline LABEL] [--control LABEL]``

A cell is (dataset, regime, teacher -> student); its rows are methods (labels). Per cell and method: accuracy
(mean ± sd, 95% t-interval, n over seeds of finished runs; last, test-best and val-selected side by side;
many/medium/few and a method's probe where they exist), the paired delta vs the baseline and vs the control
(:mod:`~kdbench.report.options`) over matching seeds with its CI (``~`` = the CI contains 0), the published
number with the gap to it; a stability table (diverged/total, failed, seed sd, loss spikes, gradient peaks,
non-finite events), a cost table (train s/epoch and its ratio to the control, inference ms/img and its ratio to
the student's forward, throughput, FLOPs, extra parameters, total epochs with extra stages) and, where runs
evaluated other predictors of their trained model, a prediction-variants table. Diverged, failed, missing and
unreadable runs are listed, never fatal. ``--out`` also writes report.{md,html,csv,tex,txt}, the data files and
the plots. The report reads records only, once.

The modules, in the order the data flows:

- :mod:`~kdbench.report.hints`: what the report knows of a method: its declared report hints, looked up once;
- :mod:`~kdbench.report.load`: every record, read once, as one frame (:class:`Records`);
- :mod:`~kdbench.report.stats`: summaries, paired deltas, per cell and method statistics;
- :mod:`~kdbench.report.variants` and :mod:`~kdbench.report.summary`: prediction variants, leaderboards;
- :mod:`~kdbench.report.tables`: the tables as strings (:mod:`~kdbench.report.fmt` writes the numbers);
- :mod:`~kdbench.report.plots` (with :mod:`~kdbench.report.predictor_plots`, :mod:`~kdbench.report.plotstyle`);
- one module per format: :mod:`~kdbench.report.text` (terminal, markdown), :mod:`~kdbench.report.html_page`,
  :mod:`~kdbench.report.latex`, :mod:`~kdbench.report.tidy` (CSV and Parquet data files);
- :mod:`~kdbench.report.render` (analyse once, render each format, write a folder), :mod:`~kdbench.report.cli`.
"""

from kdbench.report.cli import main
from kdbench.report.fmt import Table, fmt_ci, fmt_delta, fmt_num, fmt_summary
from kdbench.report.load import Records, load_records
from kdbench.report.options import DEFAULT_BASELINE, DEFAULT_CONTROL, ReportOptions
from kdbench.report.render import Analysis, analyse, render, write_outputs
from kdbench.report.stats import CELL, MethodStats, PairedDelta, Summary, cell_methods, method_order, recipe_note
from kdbench.report.tables import cell_tables, legend, problem_lines, summary_tables
from kdbench.report.text import TEXT_WIDTH, split_columns
from kdbench.report.tidy import cell_stats, write_data_files

LEGEND = legend()
"""The legend under the tables, with the default baseline and control (and no method's declared examples)."""

__all__ = ("CELL", "DEFAULT_BASELINE", "DEFAULT_CONTROL", "LEGEND", "TEXT_WIDTH", "Analysis", "MethodStats",
           "PairedDelta", "Records", "ReportOptions", "Summary", "Table", "analyse", "cell_methods", "cell_stats",
           "cell_tables", "fmt_ci", "fmt_delta", "fmt_num", "fmt_summary", "legend", "load_records", "main",
           "method_order", "problem_lines", "recipe_note", "render", "split_columns", "summary_tables",
           "write_data_files", "write_outputs")
