"""The only Ray code: a session, model actors, and the checkpointed fan-out that runs any stage's passes.

Stages never see Ray: they get a `Driver` (pipeline.stages.protocol) on the driver and a `Worker`
(the actor itself) on the actors. task_pool.py resubmits the work of lost nodes.
"""

from pipeline.runner.driver import Driver, Progress, Workers, clear_work, model_workers
from pipeline.runner.pool import keep_workers
from pipeline.runner.session import ray_session
from pipeline.runner.worker import ModelWorker

__all__ = ["Driver", "Progress", "Workers", "clear_work", "model_workers", "keep_workers", "ray_session", "ModelWorker"]
