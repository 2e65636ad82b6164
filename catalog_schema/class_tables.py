"""Tables of the model's classes (the class_pages stage): accuracy, top images, concept decomposition (IBD)."""

from __future__ import annotations

import pyarrow as pa

from catalog_schema.columns import column

CLASS = "the class's index in the model's output (the sorted class folders' order)"

CLASSES = pa.schema([
    column("class_index", pa.int32(), CLASS, required=True),
    column("class_name", pa.string(), "the class folder's name", required=True),
    column("images", pa.int64(), "evaluation images of the class (the cataloged data set's images in its folder)"),
    column("correct", pa.int64(), "of those, the images whose largest logit is the class's"),
    column("accuracy", pa.float32(), "correct / images (null without images)"),
    column("ibd_explained", pa.float32(), "IBD: the share of the class vector's squared norm its concepts explain"),
    column("ibd_residual", pa.float32(), "IBD: the share left unexplained (1 - ibd_explained)"),
])

CLASS_EXAMPLES = pa.schema([
    column("class_index", pa.int32(), CLASS, required=True),
    column("rank", pa.int32(), "0 = the image with the class's largest logit; ties go to the smaller image_id",
           required=True),
    column("image_id", pa.int64(), "the image (images.parquet)", required=True),
    column("logit", pa.float32(), "the class's logit on the image"),
    column("predicted", pa.int32(), "the class the model predicts for the image (its largest logit)"),
    column("label_index", pa.int32(), "the image's own class"),
])

CLASS_CONCEPTS = pa.schema([
    column("class_index", pa.int32(), CLASS, required=True),
    column("rank", pa.int32(), "0 = the concept chosen first by the greedy decomposition", required=True),
    column("concept", pa.string(), "the concept's name (the concept data set's label)", required=True),
    column("category", pa.string(), "its category"),
    column("coefficient", pa.float32(), "the class vector's coordinate on the concept's unit vector (least squares on "
                                        "the chosen concepts)"),
    column("explained", pa.float32(), "the share of the class vector's squared norm explained by the concepts up to "
                                      "this one"),
])
