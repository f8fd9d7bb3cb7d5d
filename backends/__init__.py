"""qpass.backends: the kernel registry, the reference backend and the Triton backend."""
