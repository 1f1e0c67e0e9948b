"""One module per `handfirst-gen` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``."""
