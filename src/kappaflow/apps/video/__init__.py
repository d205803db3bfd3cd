"""The built-in video app (`app`), its simulator, demo and commands."""
