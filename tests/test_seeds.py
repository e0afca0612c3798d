"""The derived seeds keep the values runs were made with: resumed runs (epoch seeds), shipped samples (chunk seeds)
and shipped start fits (class seeds) repeat only while these numbers do."""
from robgen import seeds
from robgen.sample import generate
from robgen.train import loop


def test_derived_seeds_are_the_recorded_values():
    # Recorded from the formulas robgen shipped with: SeedSequence([seed, epoch, rank]) -> uint32, and
    # SeedSequence([seed, chunk]) -> uint64 >> 1.
    assert (seeds.epoch_seed(0, 1, 0), seeds.epoch_seed(7, 3, 1)) == (3964924996, 1060801321)
    assert (seeds.chunk_seed(0, 0), seeds.chunk_seed(5, 2)) == (7896617691693857887, 2080082186671054586)
    assert seeds.class_seed(2, 7) == 2007


def test_training_and_sampling_use_the_one_helper():
    assert loop.epoch_seed is seeds.epoch_seed and generate.chunk_seed is seeds.chunk_seed
    assert seeds.derive(3, 4, 5) == seeds.epoch_seed(3, 4, 5) and seeds.derive(3, 4, bits=63) == seeds.chunk_seed(3, 4)
    assert seeds.chunk_seed(0, 0) < 2**63 and seeds.derive(1, 2) != seeds.derive(2, 1)
