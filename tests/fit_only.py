"""A run's epochs without the end of a run, for tests that look only at what training writes."""

from absl import flags

from alexnet_tf import train


def fit(flag_values: flags.FlagValues) -> None:
    """`train.build`, then `train.fit`: the figures and the export after the last epoch (`train.finish`), which
    change no weight and are tested on their own, are left out. MODEL_DIR's lock is released either way."""
    trainer = train.build(train.config_from_flags(flag_values))
    try:
        train.fit(trainer)
    finally:
        trainer.lock.release()
