"""Parsing a binary's flags in a test."""

from absl import flags


def flag_parser(binary):
    """parse(*args) -> the FlagValues of `binary` (alexnet_tf.train, .evaluate or .export) parsed from `args`.

    Each call defines the binary's flags in a fresh FlagValues, so binaries and tests never share flag state.
    """
    def parse(*args):
        flag_values = flags.FlagValues()
        binary.define_flags(flag_values)
        flag_values([binary.__name__, *args])
        return flag_values

    return parse
