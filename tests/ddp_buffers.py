"""`robgen` under torchrun, each rank saving its model's buffers after every training epoch (tests/test_train.py
checks that they are rank 0's on every rank: DDP runs with broadcast_buffers=False and robgen copies them itself)."""
import os
import sys
from pathlib import Path

import torch

from robgen.train import loop

real = loop._train_epoch


def train_epoch_and_save_buffers(run, epoch):
    result = real(run, epoch)
    rank = int(os.environ["RANK"])
    buffers = {name: b.detach().clone() for name, b in run.model.named_buffers()}
    torch.save(buffers, Path(os.environ["ROBGEN_TEST_BUFFERS"]) / f"epoch{epoch}_rank{rank}.pt")
    return result


loop._train_epoch = train_epoch_and_save_buffers

from robgen.cli import main  # noqa: E402

sys.exit(main())
