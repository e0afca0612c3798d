"""Issue 12: do the two AutoAttack engines break the same images of weat_c10? Reads their kept batches (the same
seeded 1,000 test JPEGs, checked label by label) and prints how many images each leaves robust, alone and together:
    python experiments/c10-fast/aa_agree.py"""
from pathlib import Path

import torch

AA = Path(__file__).parent / "aa"


def robust(engine: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels of the 1,000 images, and whether each stays correctly classified under `engine`'s attack."""
    batches = sorted((AA / f"weat_c10_{engine}").glob("batch_*.pt"))
    rows = [torch.load(path, weights_only=True)["rows"] for path in batches]
    y, adv = torch.cat([r["y"] for r in rows]), torch.cat([r["pred_adv"] for r in rows])
    return y, adv == y


if __name__ == "__main__":
    (y_ref, ref), (y_ta, ta) = robust("reference"), robust("torchattacks")
    if not torch.equal(y_ref, y_ta):
        raise SystemExit("the two engines' batches hold different images")
    print(f"{len(y_ref)} images: robust under both {int((ref & ta).sum())}, under the reference only "
          f"{int((ref & ~ta).sum())}, under torchattacks only {int((~ref & ta).sum())}")
