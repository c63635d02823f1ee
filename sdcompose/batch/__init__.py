"""``sdcompose batch``: bulk generation from a JSON-lines file, resumable, in-process or over Ray actors.

Importing costs nothing: the runners import torch (and Ray) only when they run.
"""
