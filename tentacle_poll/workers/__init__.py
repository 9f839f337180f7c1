"""Run one task in a subprocess: spawn, stream, mask secrets, time out, cancel the whole tree."""

from tentacle_poll.workers.outcome import Outcome, OutputSink, Worker
from tentacle_poll.workers.script import ScriptJob, ScriptWorker

__all__ = ["Outcome", "OutputSink", "ScriptJob", "ScriptWorker", "Worker"]
