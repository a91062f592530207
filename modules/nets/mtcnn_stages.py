"""The MTCNN stages (Zhang et al. 2016) by name, the square crop each classifies and the paper's training
constants (torch-free: config checks and the loss both read them)."""
STAGES = ("pnet", "rnet", "onet")
INPUT_SIZE = {"pnet": 12, "rnet": 24, "onet": 48}
# det / box / landmark loss weights (sec. III-B): 1 / 0.5 / 0.5 for P-Net and R-Net, 1 / 0.5 / 1 for O-Net
LOSS_WEIGHTS = {"pnet": (1.0, 0.5, 0.5), "rnet": (1.0, 0.5, 0.5), "onet": (1.0, 0.5, 1.0)}
OHEM_RATIO = 0.7  # online hard sample mining keeps the hardest 70 % of the face losses (sec. III-B)
