"""Hand-written kernels: arrays in, arrays out, no autograd.

Every op family lives in one file with its CUDA kernel and its CPU kernel side by side,
followed by a launcher that dispatches on the array type (NumPy -> CPU, CUDA device
array -> CUDA), picks grid and block sizes and writes into output arrays the caller
allocated. Launchers overwrite their outputs; they never accumulate into them.
"""
