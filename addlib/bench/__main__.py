from addlib.bench import main
from addlib.utils.errors import run_command

run_command(main)
