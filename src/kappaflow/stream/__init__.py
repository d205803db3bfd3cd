"""Stream processing: the worker loop and the library's operators."""
