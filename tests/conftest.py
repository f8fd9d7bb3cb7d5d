import os
import sys

import torch

# Tiny test tensors run faster on one thread than with two threads' sync overhead; CI runs
# pytest workers in parallel instead.
torch.set_num_threads(1)

# Test helper modules (reference implementations) import by plain name.
for sub in ("models",):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), sub))
