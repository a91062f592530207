NEGATIVE, POSITIVE, PART, LANDMARK = 0, 1, 2, 3
KIND_NAMES = ("negative", "positive", "part", "landmark")
NEGATIVE_IOU = 0.3
PART_IOU = (0.4, 0.65)
POSITIVE_IOU = 0.65
DEFAULT_MIX = {"negative": 3, "positive": 1, "part": 1, "landmark": 2}
