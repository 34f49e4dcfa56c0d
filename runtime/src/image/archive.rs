//! Image archives: `save`/`load` in the docker-archive format, `export`/`import` of flat
//! filesystems, and the tar writer that turns an overlay upper directory into a layer diff.
