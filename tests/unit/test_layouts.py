"""The layouts bench's arithmetic (bench/layouts.py): marginal costs per 10k events, and its table."""

from __future__ import annotations

import doctest
import os

import bench.layouts as layouts
from bench.layouts import layout_row, marginal_per_10k, markdown_table, process_tree


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(layouts).failed == 0


def test_a_cost_that_did_not_grow_gives_no_figure_and_a_drain_within_the_checkpoint_wait_gives_no_rate() -> None:
    assert marginal_per_10k(1_000, 2_000, 1.0, 1.0) is None
    runs = {1_000: {"seconds": 10.0, "cluster_cpu_s": 5.0, "loader_cpu_s": 0.1, "shared_cpu_s": 0.4},
            2_000: {"seconds": 12.0, "cluster_cpu_s": 5.6, "loader_cpu_s": 0.2, "shared_cpu_s": 0.5}}
    row = layout_row(1, 1, 1_000, 2_000, runs)
    # 2 s more is within twice the layouts' checkpoint interval (2 s): the wait for the final checkpoint.
    assert row["events_per_s"] is None
    assert (row["cpu_s_per_10k"], row["cluster_cpu_s_per_10k"], row["loader_cpu_s_per_10k"]) == (7.0, 6.0, 1.0)


def test_the_table_has_a_row_per_layout_and_per_other_system() -> None:
    runs = {1_000: {"seconds": 9.0, "cluster_cpu_s": 6.0, "loader_cpu_s": 0.2, "shared_cpu_s": 0.5},
            21_000: {"seconds": 19.0, "cluster_cpu_s": 12.0, "loader_cpu_s": 1.2, "shared_cpu_s": 2.5}}
    result = {"machine": {"cores": 2, "ram_gib": 23.5}, "run_at": "2026-12-07T00:00:00Z", "command": "persona bench-layouts",
              "layouts": [layout_row(2, 1, 1_000, 21_000, runs)],
              "others": {"peer": {"cpu_s_per_10k": 1.2, "shared_cpu_s_per_10k": 0.8, "events_per_s": 6_000}}}
    table = markdown_table(result)
    assert "| job, 2 TaskManager(s) x 1 slot(s) | 2 | 3.5 | 0.5 | 1.0 | 2,000 |" in table
    assert "| peer: Bytewax | 1 | 1.2 | (writes Redis itself) | 0.8 | 6,000 |" in table


def test_the_process_tree_holds_this_process_and_its_children() -> None:
    assert os.getpid() in process_tree([os.getpid()])
    assert process_tree([2 ** 22 + 1]) == []   # above pid_max: no such process
