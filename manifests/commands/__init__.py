"""One module per `handfirst-manifests` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``.

Each declares its options as a `manifests.settings.Settings` dataclass (help, default and range once);
the manifest path is the one positional argument.
"""
