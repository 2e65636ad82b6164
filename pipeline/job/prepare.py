"""The [prepare] table: make the demo's own inputs (concept world, demo model) when they are missing.

A real job has no [prepare]; the demo uses it so `neuron-catalog run jobs/demo.toml`
works on a fresh checkout, and re-runs reuse what was made (the model is cached by
a fingerprint of its training recipe).
"""

from __future__ import annotations

from typing import Any

from pipeline.job.config import JobConfig
from pipeline.errors import UserError


def prepare_inputs(job: JobConfig) -> dict[str, Any]:
    """Make what [prepare] asks for; returns what was done, for the manifest."""
    record: dict[str, Any] = {}
    world = job.prepare.concept_world
    if world is not None:
        if job.concepts.broden is None:
            raise UserError("[prepare.concept_world] needs [concepts] broden: the directory to generate the concept world in.")
        from pipeline.concepts import make_concept_world

        summary = make_concept_world(job.concepts.broden, images=world.images, size=world.size, seed=world.seed)
        print(f"concept world: {summary.images} images of {summary.size}px at {job.concepts.broden}")
        record["concept_world"] = {"path": str(job.concepts.broden), "images": summary.images, "size": summary.size}
    recipe = job.prepare.demo_model
    if recipe is not None:
        if job.concepts.broden is None or job.model.weights is None:
            raise UserError("[prepare.demo_model] needs [concepts] broden (the world to train on) and [model] weights (where to save).")
        from pipeline.demo.train import train_demo_model

        result = train_demo_model(job.concepts.broden, job.model.weights, epochs=recipe.epochs, seed=recipe.seed)
        state = "cached" if result.cached else f"trained in {result.seconds:.0f}s"
        print(f"demo model: {state}; held-out accuracy {result.heldout_accuracy:.1%} (chance {result.chance:.1%})")
        record["demo_model"] = {"train_accuracy": result.train_accuracy, "heldout_accuracy": result.heldout_accuracy,
                                "chance": result.chance, "seconds": result.seconds, "cached": result.cached,
                                "fingerprint": result.fingerprint}
    return record
