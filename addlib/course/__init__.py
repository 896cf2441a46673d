"""The course's own machinery: what builds and checks the notebooks and the shipped miniature models.

    checks           the exercises' checkers, one module per notebook, which say precisely what is wrong
    exercises        learner notebooks made from the solutions, and the README's notebook table
    plotting         the notebooks' figure helpers
    rehearsal        the hub models' architectures from their published configs, with random weights
    train_teacher, train_tiny_vae, train_evaluators
                     the trainers of the shipped miniature (each records its command in data/<model>/recipe.json)
"""
