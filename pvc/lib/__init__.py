"""The pvc library: every operation of the manual as a plain function.

Nothing in here prints, prompts, exits or reads the environment; functions return plain data or
raise one of the errors of :mod:`pvc.lib.errors`.
"""
