"""How results look: as text for a terminal or a CI log, and as tables.

The command line shows results through these; the notebook widgets will reuse them.
The engine returns values and never formats them for a person.
"""
