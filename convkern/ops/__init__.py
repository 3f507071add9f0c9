"""One module per op family: the ``Function`` (forward on CPU and CUDA, backward) and the
lowercase public wrapper whose docstring states the math. ``convkern.functional`` re-exports
the wrappers."""
