"""One module per ``dvc.yaml`` stage, named after it: each holds that stage's work as
``run(args)``; ``stages/<stage>.py`` only parses arguments and calls it."""
