"""Issue 12: do the two AutoAttack engines break the same images of weat_c10? Reads their kept batches (the same
seeded 1,000 test JPEGs: each batch file carries the digest of its images and labels, compared here) and prints how
many images each leaves robust, alone and together:
    python experiments/c10-fast/aa_agree.py"""
from pathlib import Path

import torch

AA = Path(__file__).parent / "aa"


def robust(engine: str) -> tuple[list[str], torch.Tensor]:
    """The digests of `engine`'s batches, and whether each image stays correctly classified under its attack."""
    batches = [torch.load(path, weights_only=True) for path in sorted((AA / f"weat_c10_{engine}").glob("batch_*.pt"))]
    rows = [batch["rows"] for batch in batches]
    return [batch["digest"] for batch in batches], torch.cat([r["pred_adv"] == r["y"] for r in rows])


if __name__ == "__main__":
    (images_ref, ref), (images_ta, ta) = robust("reference"), robust("torchattacks")
    if images_ref != images_ta:
        raise SystemExit("the two engines' batches hold different images")
    print(f"{len(ref)} images: robust under both {int((ref & ta).sum())}, under the reference only "
          f"{int((ref & ~ta).sum())}, under torchattacks only {int((~ref & ta).sum())}")
