import sys
from pathlib import Path

import torch

# The tiny test models live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))
