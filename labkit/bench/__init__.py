"""Benchmarks are programs, not tests: ``python -m labkit.bench <suite>`` writes JSON.

A suite is a function ``run(device, quick) -> (config, rows)``; each row is one measured
case (a dict with at least ``name``, ``median_ms`` and ``peak_mib``). Chapters register
their suites in :data:`SUITES` by module path, imported only when asked for.
"""
from labkit.bench.harness import describe_results, environment, format_table, load_results, peak_memory_mib, time_fn, time_loop, write_results

# suite name -> "module:function"
SUITES = {
    "smoke": "labkit.bench.smoke:run",
    "kan": "labkit.kan.bench:run",
    "kan-sweeps": "labkit.kan.bench:run_sweeps",
    "flow": "labkit.sda.bench:run",
    "flow-cpu": "labkit.sda.bench:run_cpu_comparison",
    "sda": "labkit.sda.bench:run_score",
    "htt": "labkit.htt.bench:run",
    "logmatmul": "labkit.htt.bench_logmatmul:run",
    "scan": "labkit.htt.bench_scan:run",
    "presets": "labkit.htt.bench_presets:run",
    "vit": "labkit.vit.bench:run",
}

__all__ = ["SUITES", "describe_results", "environment", "format_table", "load_results", "peak_memory_mib", "time_fn", "time_loop", "write_results"]
