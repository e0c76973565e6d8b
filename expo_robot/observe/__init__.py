"""Observability: metrics files (JSONL + TensorBoard), statistics, plots, Markdown reports, live status.

Modules, one concept each:
  metrics  MetricsLogger / read_metrics: every scalar to run_dir/metrics.jsonl and run_dir/tb (TensorBoard)
  stats    Wilson intervals, two-rate comparison, latency percentiles, loop cadence
  summary  the numbers of a run (eval result format, fine-tune summary from metrics), shared by plots and reports
  plots    fine-tune and evaluation figures (PNG)
  report   Markdown + JSON reports for fine-tune sessions and evaluations
  live     live status panel and progress bars that fall back to plain log lines off a terminal
"""
