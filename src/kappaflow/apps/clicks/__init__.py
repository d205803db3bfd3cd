"""The built-in clicks app (`app`), its demo and its sample of real clicks."""
