"""The [prepare] table: make the demo's own inputs (concept world, demo model) when they are missing.

A real job has no [prepare]; the demo uses it so `neuron-catalog run jobs/demo.toml`
works on a fresh checkout, and re-runs reuse what was made (the model is cached by
a fingerprint of its training recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.job.config import JobConfig
from pipeline.errors import UserError


def prepare_inputs(job: JobConfig) -> dict[str, Any]:
    """Make what [prepare] asks for; returns what was done, for the manifest."""
    record: dict[str, Any] = {}
    world = job.prepare.concept_world
    where = (world.path or job.concepts.broden) if world is not None else None
    if world is not None:
        if where is None:
            raise UserError("[prepare.concept_world] needs [concepts] broden or its own path: the directory to "
                            "generate the concept world in.")
        from pipeline.concepts import make_concept_world

        summary = make_concept_world(where, images=world.images, size=world.size, seed=world.seed)
        print(f"concept world: {summary.images} images of {summary.size}px at {where}")
        record["concept_world"] = {"path": str(where), "images": summary.images, "size": summary.size}
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
    if job.prepare.demo_generator is not None:
        record["demo_generator"] = _demo_generator(job, where)
    return record


def _demo_generator(job: JobConfig, world: Path | None) -> dict[str, Any]:
    recipe = job.prepare.demo_generator
    if world is None or job.model.weights is None or job.concepts.segmenter_weights is None:
        raise UserError("[prepare.demo_generator] needs [prepare.concept_world] (the world to train on), [model] weights "
                        "and [concepts] segmenter_weights (where to save the generator and the segmenter).")
    from pipeline.demo.generator import train_demo_generator
    from pipeline.demo.segmenter import train_demo_segmenter

    made = train_demo_generator(world, job.model.weights, epochs=recipe.epochs, seed=recipe.seed)
    print(f"demo generator: {'cached' if made['cached'] else 'trained in %.0fs' % made['seconds']}; "
          f"held-out reconstruction error {made['heldout_mse']:.4f}")
    seg = train_demo_segmenter(world, job.concepts.segmenter_weights, epochs=recipe.segmenter_epochs, seed=recipe.seed)
    print(f"demo segmenter: {'cached' if seg['cached'] else 'trained in %.0fs' % seg['seconds']}; held-out IoU "
          f"{seg['mean_iou']:.2f} on average over {len(seg['heldout_iou'])} concepts")
    return {"generator": made, "segmenter": seg}
