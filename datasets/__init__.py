"""Data layer of PixelDRL-MG: HDF5 slice stores and the tools that make and read them.

- ``datasets.store``   -- ``SliceStore`` (read-only, process-safe reader), ``StoreError``, the schema
- ``datasets.writer``  -- ``StoreWriter`` (atomic writes, per-case normalisation, seeded splits/folds)
- ``datasets.normalise`` -- the ``normalisation`` attribute's name, formatted and parsed back
- ``datasets.convert`` -- ``python -m datasets.convert {lgg,msd-heart,hecktor,nifti-pairs} ...``
- ``datasets.synth``   -- ``python -m datasets.synth`` / ``make_synthetic_store(...)``
- ``datasets.inspect`` -- ``python -m datasets.inspect FILE.h5 [--json]``

This package imports no other project code except ``a3c.fileio`` (standard library only: output
checks, temporary files, SIGTERM). Importing it is cheap (nothing is imported here).
"""
