"""robgen: robust image classifiers read as energy-based models.

Train them (WEAT, TRADES, SAT), analyse their energies, sample images from them, score the samples.
"""
from .energy import (
    class_probs,
    cross_entropy,
    delta_joint,
    delta_marginal,
    joint_energy,
    marginal_energy,
    trades_kl,
    trades_kl_terms,
    weat_weight,
)
from .errors import RobgenError
from .models import Classifier, ModelMeta, build_classifier
from .models.checkpoint import import_checkpoint, load_classifier, save_classifier

__version__ = "0.1.0"
