import os
import sys

# Test helper modules (reference implementations) import by plain name.
for sub in ("models",):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), sub))
