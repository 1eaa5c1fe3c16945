"""What every stage may use and that knows nothing of Keras or TFLite: where native builds
are cached (:mod:`.buildcache`)."""
