"""The ``fedlora`` command: the top floor, the one core package that may import every role."""
