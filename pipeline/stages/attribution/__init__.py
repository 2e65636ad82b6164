"""The attribution stage: saliency, Grad-CAM and occlusion maps of each unit's top examples, its empirical receptive
field, and the model-randomization check of each method."""
