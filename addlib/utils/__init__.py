"""What every trainer and command shares: one-line errors, the run loop, checkpoints.

    errors       the one-line errors every entry point shares, and the command-line wrapper that prints them
    runs         the run loop every trainer uses: progress, loss log, NaN stops, lr schedule, seeds, recipe
    checkpoints  checkpoints in safetensors (no pickle) for exact resumes; the trainers' command lines
"""
