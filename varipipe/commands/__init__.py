"""CLI subcommands; see ``varipipe.cli``."""
