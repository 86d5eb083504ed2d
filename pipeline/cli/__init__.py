"""The command line's commands, each an add_* function (its parser) and a cmd_* function."""
