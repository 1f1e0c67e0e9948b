"""One module per `handfirst-prep` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``."""
