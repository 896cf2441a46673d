"""nbgrader's configuration for a course built from this repository's notebooks.

Copy this file into your course directory (the folder holding ``source/``) and run nbgrader there; README.md,
"For teachers", walks through it.
"""

c = get_config()  # noqa: F821 (nbgrader defines it when it reads this file)

c.CourseDirectory.course_id = "add-course"

# nbgrader gives each cell 30 s by default; the training cells of notebooks 04 and 05 run for minutes on a
# 2-core CPU, and a cell cut short fails every later cell, so every student would lose points they earned.
# The same limit as the test suite's (pyproject.toml, --nbval-cell-timeout).
c.ExecutePreprocessor.timeout = 900
