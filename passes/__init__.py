"""qpass.passes: one file per pass (DESIGN §3). Installed as the subpackage qpass.passes."""
from .fuse_norms import FuseNorms
from .rtn import RTN
from .rotate import Rotate
from .learned_rotate import LearnedRotate
from .duquant import DuQuant
from .learned_affine import LearnedAffine
from .smoothquant import SmoothQuant
from .lower import Lower
from .gptq import GPTQ
from .observe import ObserveActivations
from .awq import AWQ
