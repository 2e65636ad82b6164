"""The concept world: procedurally drawn scenes with exact concept labels, written in Broden format."""

from pipeline.concepts.broden_writer import ConceptWorldSummary, make_concept_world
from pipeline.concepts.vocabulary import CATEGORY_LABELS, COLORS, SCENE_NAMES

__all__ = ["CATEGORY_LABELS", "COLORS", "SCENE_NAMES", "ConceptWorldSummary", "make_concept_world"]
