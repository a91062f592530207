"""Target codecs: one object (or pair of functions) per kind of training target, used by the
datamodule to encode annotations into targets and by the module to decode network outputs.

- ``box_offsets``: MTCNN box-regression offsets and landmark positions relative to a crop.

Heatmap and boundary-map codecs (pose, LAB) will sit beside it, one file each.
"""
