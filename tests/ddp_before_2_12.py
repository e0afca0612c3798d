"""`robgen` with DistributedDataParallel's buffer broadcast as it is before torch 2.12, for torchrun in tests.

torch 2.12 (pytorch#175851) wraps DDP's in-place BatchNorm buffer broadcast in _unsafe_preserve_version_counter, so
a backward through two DDP forwards no longer fails; undoing that wrapper brings back torch 2.2-2.11's behaviour.
"""
import contextlib
import sys

import torch

torch.autograd._unsafe_preserve_version_counter = lambda *args, **kwargs: contextlib.nullcontext()

from robgen.cli import main  # noqa: E402

sys.exit(main())
