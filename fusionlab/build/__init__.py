"""fusionlab.build: compile generated kernels for real GPU targets (no GPU needed), cache and export them.

* ``inspect``: ``inspect_source`` / ``inspect_many`` -> ``CompileReport`` (TTIR, TTGIR, LLVM IR,
  PTX, SASS, registers, spills, shared memory, modeled occupancy);
* ``workers``: the pool of compile worker processes those run in;
* ``cache``: the content-addressed disk cache (``FUSIONLAB_CACHE_DIR``);
* ``export``: ``save_kernel`` / ``export_kernels`` write standalone kernel modules.
"""
