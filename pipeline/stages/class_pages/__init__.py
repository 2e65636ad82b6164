"""The class_pages stage: per class, its accuracy, top images with Grad-CAM, and its concept decomposition (IBD)."""
