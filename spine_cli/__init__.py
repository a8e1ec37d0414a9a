"""The Spine operator CLI (`./spine`, or `python -m spine_cli`): one module per command group."""
