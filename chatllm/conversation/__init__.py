"""A conversation: its steps' marks (`marks`), the model's memory of them (`memory`), and
the tree they form (`tree`; a flat thread's tree in `flat`).

Importers name the module they need: `marks`, `tree` and `flat` load neither LangChain
nor Chainlit (the share view and the store use them), `memory` loads LangChain.
"""
