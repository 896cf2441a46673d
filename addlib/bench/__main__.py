from addlib.bench import main
from addlib.errors import run_command

run_command(main)
