"""pytest-xdist's `--dist loadgroup`, made to finish after a worker crashes.

A worker dies when something ends its process from under pytest (a native crash, Ray's core
worker exiting the process when its raylet goes mid-`ray.init`). xdist reports the test it was
running as failed and starts a replacement worker; but pytest-xdist 3.8.0's scheduler for
`loadscope`/`loadgroup` then deadlocks, and the run waits until CI's time runs out (seen: 60 minutes
of silence after "[gw2] node down: Not properly terminated", and no summary saying which test).
Three faults combine (pytest-dev/pytest-xdist #1323, #1327, #1371, #1378):

- the dead worker's whole workload goes back on the queue, groups it had finished included; such a
  group is later handed out as an empty batch, which never completes, so the worker it went to is
  never given more work nor told to stop;
- the test it crashed on goes back too, and runs again on the replacement (which may crash the
  same way), though it has already been reported failed;
- a worker given a single test waits for a second one (or for "shutdown") before it runs the
  first, but a worker is only told either when one of its own tests completes: a replacement
  handed one single-test group waits forever.

Here the dead worker's finished groups are dropped, the crashed test counts as done (its failure
is the report), a worker is always handed at least two tests while there are any, and once the
queue is empty every worker is told to stop after what it holds.
"""

from __future__ import annotations

from xdist.scheduler import LoadGroupScheduling
from xdist.workermanage import WorkerController


class CrashSafeLoadGroupScheduling(LoadGroupScheduling):
    def remove_node(self, node: WorkerController) -> str | None:
        workload = self.assigned_work.pop(node)
        unfinished = {scope: unit for scope, unit in workload.items() if not all(unit.values())}
        if not unfinished:
            return None
        crash_scope, crash_item = next((scope, nodeid) for scope, unit in unfinished.items()
                                       for nodeid, done in unit.items() if not done)
        unfinished[crash_scope][crash_item] = True  # reported failed by xdist: not run again
        self.workqueue.update((scope, unit) for scope, unit in unfinished.items() if not all(unit.values()))
        for other in self.assigned_work:
            self._reschedule(other)
        return crash_item

    def _reschedule(self, node: WorkerController) -> None:
        if node.shutting_down:
            return
        if self.workqueue and self._pending_of(self.assigned_work[node]) <= 2:
            self._assign_work_unit(node)  # the same threshold as xdist's: a unit when 2 or fewer are left
        while self.workqueue and self._pending_of(self.assigned_work[node]) < 2:
            self._assign_work_unit(node)  # a worker runs a test only once it holds the next (or "shutdown")
        if not self.workqueue:
            for each in self.assigned_work:  # nothing left to hand out: no worker may wait for more
                if not each.shutting_down:
                    each.shutdown()
