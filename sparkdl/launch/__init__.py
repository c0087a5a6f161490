"""Launchers run one function on N workers at once, each with a connected transport (masters decide what runs)."""
from __future__ import annotations

from sparkdl.config import RunConfig
from sparkdl.launch.base import Launcher


def build_launcher(run: RunConfig) -> Launcher:
    """The launcher a barrier fit runs on: a Spark barrier stage over ``run.transport`` (refuses a transport Spark
    tasks cannot use, before any work). ``LocalLauncher`` is built by hand (tests, one machine)."""
    from sparkdl.launch.spark import SparkBarrierLauncher

    return SparkBarrierLauncher(run.transport)
