"""emotrain's Hydra configs (``train.yaml`` and one folder per config group), shipped inside the package.

Hydra finds them as ``pkg://emotrain.conf``; a user's own config folder composes on top
(``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``).
"""
