from addlib.bench import main
from addlib.utils.commands import run_command

run_command(main)
