"""What every trainer and command shares.

    errors       one-line errors: the checks of the values every entry point takes in
    commands     every command's line: one-line parser errors, and the trainers' configurations, checked as they
                 are built, an option per field, and the command that repeats a run
    runs         the run loop every trainer uses: progress, loss log, NaN stops, lr schedule, seeds, recipe
    checkpoints  checkpoints in safetensors (no pickle), for exact resumes
"""
