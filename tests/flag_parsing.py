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


def recipe_parser(binary):
    """parse(*args) like `flag_parser`, with the binary's recipes read as its `main` reads them
    (`cli.expand_recipes`): a flagfile's flags of another binary are left out."""
    from alexnet_tf import cli

    def parse(*args):
        flag_values = flags.FlagValues()
        binary.define_flags(flag_values)
        name = binary.__name__.rsplit(".", 1)[-1]
        flag_values(cli.expand_recipes(name, [binary.__name__, *args], flag_values))
        return flag_values

    return parse
