"""What every stage may use and that knows nothing of Keras or TFLite: where native builds are
cached and how they are built (:mod:`.buildcache`), the fused CPU kernel's build and C ABI for
every framework (:mod:`.fusedbuild`, :mod:`.fusedcpu`), the machine a measurement ran on
(:mod:`.machine`), and the deprecation warning (:mod:`.deprecation`)."""
